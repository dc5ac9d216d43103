"""Helpers of infra/scripts/sam-local.sh, run with the SAM CLI's own Python (its venv).

    python sam_local.py prepare --template template.yaml --work DIR --code Function=BOOTSTRAP ...
                                [--env-vars FILE]
        Writes DIR/template.yaml, a copy of the template for local runs, and DIR/env.json, the
        `--env-vars` file. Each function's bootstrap is copied (hard-linked when possible) into
        DIR/code/<Function>/bootstrap, the folder its CodeUri points at.

    python sam_local.py sam ARGS...
        Runs the SAM CLI (`sam ARGS...`) with every function container on the host's network.

Why a copy of the template (SAM local's limits, SAM CLI 1.170):
- `--env-vars` only overrides variables the template declares, and SAM local passes an empty
  string for a value it cannot resolve (`!If [Cond, X, !Ref AWS::NoValue]`): the copy declares
  every variable the env file sets (e.g. AWS_ENDPOINT_URL for the local stack) and leaves out
  none of the template's own.
- arm64 (what the template deploys) would need an arm64 image and arm64 bootstraps: the copy
  runs x86_64.
- `CodeUri` points at folders holding each bootstrap, so no `sam build` is needed.
Files a function reads (a CA certificate) must sit under its CodeUri, the only host folder SAM
mounts (at /var/task): an env value naming an existing host file ending in `_CA_FILE` is copied
there and rewritten.

Why the host network: SAM starts each container on Docker's default bridge network and reaches
the Runtime Interface Emulator (RIE) through a published port. On the bridge, 127.0.0.1 is the
container's own, so the functions could not reach the local stack, and the bridge network needs
private-range addresses. Instead, each container SAM creates gets `NetworkMode=host` and no
published ports, and the RIE is told to listen on 127.0.0.1 at the port SAM chose to publish
(`--runtime-interface-emulator-address`), with its Runtime API on another free loopback port
(`--runtime-api-address`), so SAM finds the emulator where it expects it and every packet stays
on 127.0.0.1.
"""

import argparse
import json
import os
import shutil
import socket
import sys

# The variables a local run may need that the template does not declare (SAM would not pass
# them on), per function ("*": every function): taken from the environment when the env file
# is generated.
LOCAL_ONLY_VARIABLES = {
    "*": ["AWS_ENDPOINT_URL"],
    "PollMailboxesFunction": ["MAILBRIDGE_IMAP_CA_FILE"],
}
# Without these no function can start: an env file generated without them is refused.
REQUIRED_VARIABLES = ["MAILBRIDGE_STATE_TABLE", "MAILBRIDGE_THREAD_KEY_SECRET"]
RIE = "/var/rapid/aws-lambda-rie"
RIE_CONTAINER_PORT = "8080"
FUNCTION_TYPE = "AWS::Serverless::Function"


def fail(message):
    print(f"sam-local: {message}", file=sys.stderr)
    sys.exit(2)


def functions_of(template):
    return {
        name: resource
        for name, resource in template.get("Resources", {}).items()
        if resource.get("Type") == FUNCTION_TYPE
    }


def link_or_copy(source, target):
    os.makedirs(os.path.dirname(target), exist_ok=True)
    if os.path.exists(target):
        os.remove(target)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def env_file_values(template_functions, path):
    """The {Function: {VAR: value}} of a user's env file (SAM's format; "Parameters" applies to
    every function)."""
    with open(path, encoding="utf-8") as f:
        try:
            given = json.load(f)
        except json.JSONDecodeError as e:
            fail(f"{path} is not JSON: {e}")
    if not isinstance(given, dict):
        fail(f"{path}: expected an object {{\"FunctionName\": {{\"VARIABLE\": \"value\"}}}}")
    shared = given.get("Parameters", {})
    values = {}
    for name in template_functions:
        merged = dict(shared)
        merged.update(given.get(name, {}))
        values[name] = {k: str(v) for k, v in merged.items()}
    unknown = sorted(set(given) - set(template_functions) - {"Parameters"})
    if unknown:
        fail(f"{path} names no function of the template: {', '.join(unknown)} "
             f"(functions: {', '.join(sorted(template_functions))})")
    return values


def environment_values(template_functions):
    """Each function's variables (the template's and the local-only ones) that are set in this
    shell, e.g. by pasting the `export` lines of `local-stack start`."""
    missing = [v for v in REQUIRED_VARIABLES if not os.environ.get(v)]
    if missing:
        fail(
            f"{', '.join(missing)} not set: start the local stack "
            "(cargo run -p mailbridge-local-stack --bin local-stack -- start) and paste the "
            "`export` lines it prints into this shell, or pass --env-vars FILE (see docs/sam-local.md)"
        )
    values = {}
    for name, resource in template_functions.items():
        declared = list(
            ((resource.get("Properties", {}).get("Environment") or {}).get("Variables") or {})
        )
        values[name] = {
            variable: os.environ[variable]
            for variable in declared + LOCAL_ONLY_VARIABLES["*"] + LOCAL_ONLY_VARIABLES.get(name, [])
            if os.environ.get(variable) is not None
        }
    return values


def prepare(args):
    from samcli.yamlhelper import yaml_dump, yaml_parse

    with open(args.template, encoding="utf-8") as f:
        template = yaml_parse(f.read())
    functions = functions_of(template)
    code = {}
    for item in args.code:
        name, _, bootstrap = item.partition("=")
        if name not in functions:
            fail(f"{name} is not a function of {args.template} ({', '.join(sorted(functions))})")
        if not os.path.isfile(bootstrap):
            fail(f"{bootstrap} (the bootstrap of {name}) does not exist")
        code[name] = bootstrap

    values = (env_file_values(functions, args.env_vars) if args.env_vars
              else environment_values(functions))

    os.makedirs(args.work, exist_ok=True)
    env_out = {}
    for name, resource in functions.items():
        code_dir = os.path.abspath(os.path.join(args.work, "code", name))
        if name in code:
            link_or_copy(code[name], os.path.join(code_dir, "bootstrap"))
            os.chmod(os.path.join(code_dir, "bootstrap"), 0o755)
        properties = resource.setdefault("Properties", {})
        properties["CodeUri"] = code_dir
        properties["Architectures"] = ["x86_64"]
        metadata = resource.get("Metadata", {})
        for key in ("BuildMethod", "BuildProperties"):
            metadata.pop(key, None)
        variables = properties.setdefault("Environment", {}).setdefault("Variables", {})
        for variable, value in list(variables.items()):
            if isinstance(value, dict) and "Fn::If" in value:
                # SAM local cannot resolve it and would pass "": say so, the env file sets it
                variables[variable] = ""
        env = {}
        for variable, value in values.get(name, {}).items():
            if variable.endswith("_CA_FILE") and value and os.path.isfile(value) \
                    and not value.startswith("/var/task/"):
                file_name = os.path.basename(value)
                link_or_copy(value, os.path.join(code_dir, file_name))
                value = f"/var/task/{file_name}"
            variables.setdefault(variable, "")
            env[variable] = value
        env_out[name] = env
    globals_function = template.get("Globals", {}).get("Function")
    if isinstance(globals_function, dict) and "Architectures" in globals_function:
        globals_function["Architectures"] = ["x86_64"]

    with open(os.path.join(args.work, "template.yaml"), "w", encoding="utf-8") as f:
        f.write("# Generated by infra/scripts/sam-local.sh from template.yaml for sam local runs.\n")
        f.write(yaml_dump(template))
    with open(os.path.join(args.work, "env.json"), "w", encoding="utf-8") as f:
        json.dump(env_out, f, indent=2, sort_keys=True)
        f.write("\n")


def free_loopback_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_sam(argv):
    import docker.models.containers as containers
    from samcli.cli.main import cli

    create = containers.ContainerCollection.create

    def create_on_host_network(self, image, command=None, **kwargs):
        published = kwargs.pop("ports", None) or {}
        kwargs.pop("network", None)
        kwargs["network_mode"] = "host"
        entrypoint = kwargs.get("entrypoint")
        if entrypoint and entrypoint[0] == RIE:
            interface, port = published[RIE_CONTAINER_PORT]
            kwargs["entrypoint"] = list(entrypoint) + [
                "--runtime-interface-emulator-address", f"{interface}:{port}",
                "--runtime-api-address", f"127.0.0.1:{free_loopback_port()}",
            ]
        return create(self, image, command, **kwargs)

    containers.ContainerCollection.create = create_on_host_network
    sys.argv = ["sam"] + argv
    sys.exit(cli())


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "sam":
        run_sam(sys.argv[2:])
    parser = argparse.ArgumentParser(prog="sam_local.py")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="write the local template copy and the --env-vars file")
    p.add_argument("--template", required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--code", action="append", default=[], metavar="FUNCTION=BOOTSTRAP")
    p.add_argument("--env-vars", help="a user's env file instead of this shell's variables")
    args = parser.parse_args()
    prepare(args)


if __name__ == "__main__":
    main()
