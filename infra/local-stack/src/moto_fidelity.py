# moto_server with the deviations from AWS that mailbridge's code depends on corrected, so the
# stand-in is as strict as the service (started by moto.rs as `python -c <this> -H ... -p ...`).
import sys

from moto.secretsmanager import models

_update_secret_version_stage = models.SecretsManagerBackend.update_secret_version_stage


def update_secret_version_stage(
    self, secret_id, version_stage, remove_from_version_id, move_to_version_id
):
    result = _update_secret_version_stage(
        self, secret_id, version_stage, remove_from_version_id, move_to_version_id
    )
    # AWS: the version AWSCURRENT was moved to is the current one for every later call. moto
    # keeps its own pointer on the old version, so a later PutSecretValue would leave AWSCURRENT
    # on two versions and a read without a stage would return the old value.
    if version_stage == "AWSCURRENT" and move_to_version_id:
        self.secrets[secret_id].default_version_id = move_to_version_id
    return result


models.SecretsManagerBackend.update_secret_version_stage = update_secret_version_stage

# AWS: a conditional write is atomic per item (two `attribute_not_exists(pk)` puts of one key:
# exactly one succeeds) and a transaction is all or nothing. moto_server answers requests on
# threads and checks a condition, then writes, without a lock: rarely (1 round in ~300 of 4
# concurrent puts of one new key), two puts both won, so two copies of one notification in one
# batch could both claim it and both be sent. Every DynamoDB and Secrets Manager backend call runs under one lock,
# as the service serializes writes to an item (SQS is left alone: its long polls wait).
import functools  # noqa: E402
import inspect  # noqa: E402
import threading  # noqa: E402

from moto.dynamodb.models import DynamoDBBackend  # noqa: E402

_backend_lock = threading.RLock()


def _serialized(method):
    @functools.wraps(method)
    def call(*args, **kwargs):
        with _backend_lock:
            return method(*args, **kwargs)

    return call


for _backend in (DynamoDBBackend, models.SecretsManagerBackend):
    for _name, _method in list(vars(_backend).items()):
        if not _name.startswith("_") and inspect.isfunction(_method):
            setattr(_backend, _name, _serialized(_method))

from moto.server import main  # noqa: E402  (after the patch)

sys.exit(main())
