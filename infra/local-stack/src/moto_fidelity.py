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

from moto.server import main  # noqa: E402  (after the patch)

sys.exit(main())
