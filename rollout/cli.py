"""The `ringmaster` command: serve the API, migrate the database, work with cohort sets, flags and rollouts.

Commands that read or change cohorts talk to a running `ringmaster serve` over its public API
(`--server`, or RINGMASTER_SERVER), the way kubectl talks to an API server; `serve` and `db` work
on the database directly.
"""

from __future__ import annotations

import getpass
import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
import uvicorn
import yaml
from rich.console import Console
from rich.markup import escape
from rich.table import Column, Table

from cohorts.db import current_revision, database_url, downgrade, head_revision, make_engine, upgrade
from rollout.api.sync import DEFAULT_SYNC_PORT
from rollout.auth.tokens import CACHE_SECONDS, ROLE_DUTIES, AuthError, TokenStore
from rollout.board import (
    GATE_PHASE_STYLES,
    PHASE_STYLES,
    VERDICT_STYLES,
    BoardSnapshot,
    rollout_detail,
    rollout_table,
    settled,
    values_text,
    watch,
    when,
)
from rollout.client import TOKEN_ENV, ClientError, RingmasterClient
from rollout.controller.observed import REQUEST_ANNOTATION
from rollout.settings import ServiceSettings, SettingsError

app = typer.Typer(help="Ringmaster: release rings by user cohort.", no_args_is_help=True)
db_app = typer.Typer(help="Migrate the database (RINGMASTER_DATABASE_URL, default SQLite in RINGMASTER_DATA_DIR).",
                     no_args_is_help=True)
cohort_app = typer.Typer(help="Cohort sets: rings, rules and who is in which ring.", no_args_is_help=True)
usage_app = typer.Typer(help="Per-user usage history that usage rules select on.", no_args_is_help=True)
flag_app = typer.Typer(help="Feature flags: variants, ring mappings, enable and disable.", no_args_is_help=True)
rollout_app = typer.Typer(help="Rollouts: list them, show one or its gates; promote, pause, resume, abort or "
                          "retry one.", no_args_is_help=True)
localcluster_app = typer.Typer(
    help="A local Kubernetes control plane (etcd, kube-apiserver and kube-controller-manager 1.20, "
    "a simulated node) in the data folder.",
    no_args_is_help=True,
)
token_app = typer.Typer(help="API tokens and their roles, on the database directly like `db`; commands that call "
                        "the API send one (--token or RINGMASTER_TOKEN).", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(token_app, name="token")
app.add_typer(localcluster_app, name="localcluster")
app.add_typer(cohort_app, name="cohort")
app.add_typer(usage_app, name="usage")
app.add_typer(flag_app, name="flag")
app.add_typer(rollout_app, name="rollout")

console = Console()
errors = Console(stderr=True)

ServerOption = Annotated[str | None, typer.Option("--server", help="API address; default $RINGMASTER_SERVER "
                                                                  "or http://127.0.0.1:8080")]
SetOption = Annotated[str, typer.Option("--set", "-s", help="cohort set name")]


class Output(StrEnum):
    json = "json"
    yaml = "yaml"


OutputOption = Annotated[Output | None, typer.Option(
    "--output", "-o", help="print the data as json or yaml (the same structure) instead of the human view")]
JsonOption = Annotated[bool, typer.Option("--json", hidden=True, help="the same as -o json")]
USAGE_BATCH_ROWS = 10_000


def fail(message: str) -> typer.Exit:
    errors.print(f"[red]error:[/red] {message}", highlight=False)
    return typer.Exit(1)


@app.callback()
def main(token: Annotated[str | None, typer.Option(
        "--token", envvar=TOKEN_ENV, show_envvar=True,
        help="API token that commands calling the API send (`ringmaster token create` makes one)")] = None) -> None:
    """Ringmaster: release rings by user cohort."""
    if token:
        os.environ[TOKEN_ENV] = token  # RingmasterClient sends $RINGMASTER_TOKEN; --token sets it for this command


@contextmanager
def client(server: str | None) -> Iterator[RingmasterClient]:
    connection = RingmasterClient(server)
    try:
        yield connection
    except ClientError as error:
        for item in (error.problem or {}).get("errors", []):
            errors.print(f"  {item.get('field')}: {item.get('message')}", highlight=False)
        raise fail(str(error)) from error
    finally:
        connection.close()


def parse_attributes(pairs: list[str]) -> dict[str, Any]:
    """`k=v` gives the string v; `k:=json` gives a typed value (`seats:=40`, `beta:=true`)."""
    attributes: dict[str, Any] = {}
    for pair in pairs:
        name, equals, raw = pair.partition("=")
        if not equals:
            raise fail(f"--attr {pair}: write name=value (a string) or name:=json (a number, true, ...)")
        if name.endswith(":"):
            name = name[:-1]
            try:
                attributes[name] = json.loads(raw)
            except json.JSONDecodeError as error:
                raise fail(f"--attr {pair}: {raw!r} is not JSON; write e.g. seats:=40 or beta:=true") from error
        else:
            attributes[name] = raw
        if not name:
            raise fail(f"--attr {pair}: the attribute name is empty")
    return attributes


def emit_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2) + "\n")


def emit_data(value: Any, output: Output) -> None:
    if output is Output.yaml:
        sys.stdout.write(yaml.safe_dump(value, sort_keys=False, allow_unicode=True))
    else:
        emit_json(value)


def printed_as_data(value: Any, output: Output | None, as_json: bool) -> bool:
    """Print `value` as JSON or YAML when -o (or the older --json) asks for it; whether it did."""
    chosen = Output.json if as_json and output is None else output
    if chosen is None:
        return False
    emit_data(value, chosen)
    return True


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 8080,
    sync_port: Annotated[int, typer.Option(help="port of flagd's sync gRPC service (flagd.sync.v1); 0 turns it off",
                                           min=0, max=65535)] = DEFAULT_SYNC_PORT,
    workers: Annotated[int, typer.Option(
        help="processes serving both ports (uvicorn workers); each has its own caches, streams and /metrics",
        min=1, max=64)] = 1,
) -> None:
    """Serve the HTTP API (cohorts, flags, rollouts, flagd document and stream, OFREP, /metrics) and flagd sync."""
    from rollout.api.app import create_app
    from rollout.api.workers import ListenError, serve_workers

    try:
        settings = replace(ServiceSettings.from_environment(), sync_port=sync_port or None, sync_host=host)
    except SettingsError as error:
        raise fail(str(error)) from error
    if workers == 1:
        uvicorn.run(create_app(settings), host=host, port=port, log_level="info", timeout_graceful_shutdown=10)
        return
    try:
        serve_workers(host, port, sync_port or None, workers)
    except ListenError as error:
        raise fail(str(error)) from error


@app.command("controller")
def controller(
    kubeconfig: Annotated[Path | None, typer.Option(
        envvar=["RINGMASTER_KUBECONFIG", "KUBECONFIG"],
        help="kubeconfig to use; default: in-cluster, else the local control plane's")] = None,
    namespace: Annotated[str | None, typer.Option(help="watch one namespace; default every namespace")] = None,
    identity: Annotated[str | None, typer.Option(help="this replica's name in the Lease; default host-pid")] = None,
    lease_namespace: Annotated[str, typer.Option(envvar="RINGMASTER_LEASE_NAMESPACE")] = "default",
    lease_name: Annotated[str, typer.Option(envvar="RINGMASTER_LEASE_NAME")] = "ringmaster-controller",
    lease_duration: Annotated[float, typer.Option(help="seconds a Lease lasts unrenewed", min=1)] = 15.0,
    renew_deadline: Annotated[float, typer.Option(help="seconds the leader may fail to renew", min=0.5)] = 10.0,
    retry_period: Annotated[float, typer.Option(help="seconds between election rounds", min=0.1)] = 2.0,
    workers: Annotated[int, typer.Option(help="Rollouts reconciled at once", min=1, max=64)] = 4,
    install_crd: Annotated[bool, typer.Option(help="install or update the Rollout and SLOGate CRDs first")] = True,
    prometheus_url: Annotated[str | None, typer.Option(
        envvar="RINGMASTER_PROMETHEUS_URL",
        help="the Prometheus gates query; default the local control plane's, when it runs one")] = None,
    metrics_address: Annotated[str, typer.Option(
        envvar="RINGMASTER_CONTROLLER_METRICS_ADDRESS",
        help="HOST:PORT serving /metrics, /healthz and /readyz; '' or off serves none")] = "127.0.0.1:8090",
) -> None:
    """Reconcile Rollouts: rings, make-before-break StatefulSets, flags, gates. One leader among replicas (a Lease)."""
    import logging
    import signal

    from rollout.controller.controller import Controller, ControllerSettings, default_identity
    from rollout.controller.crd import install_crd as install
    from rollout.localcluster.cluster import local_prometheus_url

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    prometheus_url = prometheus_url or local_prometheus_url()
    if prometheus_url is None:
        logging.warning("no Prometheus: gates will hold every rollout that has them; set RINGMASTER_PROMETHEUS_URL")
    else:
        logging.info("gates query Prometheus at %s", prometheus_url)
    url = database_url()
    upgrade(url)
    engine = make_engine(url)
    settings = ControllerSettings(
        namespace=namespace, identity=identity or default_identity(), lease_namespace=lease_namespace,
        lease_name=lease_name, lease_duration_s=lease_duration, renew_deadline_s=renew_deadline,
        retry_period_s=retry_period, workers=workers, prometheus_url=prometheus_url, metrics_address=metrics_address,
    )
    try:
        with kube_api_client(kubeconfig) as api_client:
            if install_crd:
                install(api_client)
            try:
                running = Controller(api_client, engine, settings)
            except ValueError as error:  # a Prometheus URL that is no URL, a metrics address unusable or in use
                raise fail(str(error)) from error
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, lambda *_: running.stop())
            code = running.run()
    finally:
        engine.dispose()
    raise typer.Exit(code)


@contextmanager
def kube_api_client(kubeconfig: Path | None) -> Iterator[Any]:
    """An API client from a kubeconfig, else in-cluster, else the local control plane's kubeconfig."""
    from rollout.kube import NOT_CONFIGURED, load_api_client

    api_client = load_api_client(kubeconfig)
    if api_client is None:
        raise fail(f"no kubeconfig: pass --kubeconfig, {NOT_CONFIGURED}")
    with api_client:
        yield api_client


@db_app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument(help="target revision")] = "head") -> None:
    """Bring the database schema up to a revision (default: the newest)."""
    url = database_url()
    upgrade(url, revision)
    engine = make_engine(url)
    try:
        console.print(f"database {engine.url.render_as_string(hide_password=True)} is at revision "
                      f"{current_revision(engine)}", highlight=False)
    finally:
        engine.dispose()


@db_app.command("downgrade")
def db_downgrade(revision: Annotated[str, typer.Argument(help="target revision, e.g. base")]) -> None:
    """Take the database schema back to a revision ('base' removes every table)."""
    downgrade(database_url(), revision)
    console.print(f"database downgraded to {revision}")


@db_app.command("current")
def db_current(output: OutputOption = None, as_json: JsonOption = False) -> None:
    """Show the database's schema revision beside the one this build needs."""
    engine = make_engine(database_url())
    try:
        current = current_revision(engine)
    finally:
        engine.dispose()
    head = head_revision()
    if not printed_as_data({"current": current, "head": head, "upToDate": current == head}, output, as_json):
        console.print(f"current: {current}  head: {head}")


@contextmanager
def token_store() -> Iterator[TokenStore]:
    """The tokens in the database, its schema brought to head first (so a fresh install can make its first)."""
    url = database_url()
    upgrade(url)
    engine = make_engine(url)
    try:
        yield TokenStore(engine)
    except AuthError as error:
        raise fail(str(error)) from error
    finally:
        engine.dispose()


def _cli_user() -> str:
    return f"{getpass.getuser()} (cli)"


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Option("--name", help="who will use it, a person or a system; changes are recorded "
                                                     "under this name")],
    role: Annotated[str, typer.Option("--role", help="; ".join(f"{role}: {duty}"
                                                              for role, duty in ROLE_DUTIES.items()))],
    by: Annotated[str | None, typer.Option("--by", help="who creates it, for the audit log; default <user> (cli)")]
    = None,
) -> None:
    """Create an API token and print it alone on the last line; it is shown this once (only its hash is kept)."""
    with token_store() as tokens:
        _, token = tokens.create(name, role, by or _cli_user())
    console.print(f"token {name!r} with the {role} role is created; keep it secret, it is not shown again:",
                  highlight=False, soft_wrap=True)
    sys.stdout.write(f"{token}\n")


@token_app.command("list")
def token_list(output: OutputOption = None, as_json: JsonOption = False) -> None:
    """List tokens: name, role, who created it and when, whether revoked (never the token)."""
    with token_store() as tokens:
        listed = tokens.list()
    if printed_as_data([{"name": item.name, "role": item.role, "createdAt": item.created_at.isoformat(),
                         "createdBy": item.created_by,
                         "revokedAt": item.revoked_at.isoformat() if item.revoked_at else None} for item in listed],
                       output, as_json):
        return
    table = Table("NAME", "ROLE", "CREATED", "BY", "REVOKED", box=None)
    for item in listed:
        table.add_row(escape(item.name), item.role, when(item.created_at.isoformat()), escape(item.created_by),
                      when(item.revoked_at.isoformat()) if item.revoked_at else "-")
    console.print(table if listed else "no tokens; `ringmaster token create --name NAME --role ROLE` makes one",
                  highlight=False)


@token_app.command("revoke")
def token_revoke(
    name: Annotated[str, typer.Argument(help="the token's name")],
    by: Annotated[str | None, typer.Option("--by", help="who revokes it, for the audit log; default <user> (cli)")]
    = None,
) -> None:
    """Revoke a token: `ringmaster serve` refuses it within seconds (it trusts a verified token that long)."""
    with token_store() as tokens:
        revoked = tokens.revoke(name, by or _cli_user())
    since = when(revoked.revoked_at.isoformat() if revoked.revoked_at else None)
    console.print(f"token {name!r} ({revoked.role}) is revoked since {since} UTC; the API refuses it within "
                  f"{CACHE_SECONDS:g} s", highlight=False, soft_wrap=True)


@cohort_app.command("list")
def cohort_list(server: ServerOption = None, output: OutputOption = None, as_json: JsonOption = False) -> None:
    """List cohort sets with their current version."""
    with client(server) as api:
        items = api.list_sets()
    if printed_as_data(items, output, as_json):
        return
    table = Table("name", "version", "rings", "changed", "by")
    for item in items:
        table.add_row(item["name"], str(item["version"]), " → ".join(item["spec"]["rings"]),
                      item["createdAt"][:16].replace("T", " "), item["createdBy"])
    console.print(table)


@cohort_app.command("get")
def cohort_get(name: str, version: Annotated[int | None, typer.Option(help="an older version")] = None,
               server: ServerOption = None, output: OutputOption = None) -> None:
    """Print a cohort set (its spec and version) as JSON, or YAML with -o yaml."""
    with client(server) as api:
        emit_data(api.get_set(name, version), output or Output.json)


@cohort_app.command("apply")
def cohort_apply(
    file: Annotated[Path, typer.Option("--file", "-f", exists=True, dir_okay=False, help="a cohort set as JSON")],
    comment: Annotated[str | None, typer.Option(help="why, kept with the version")] = None,
    server: ServerOption = None,
) -> None:
    """Create a cohort set from a file, or make a new version of it."""
    try:
        spec = json.loads(file.read_text())
    except json.JSONDecodeError as error:
        raise fail(f"{file}: not JSON ({error})") from error
    with client(server) as api:
        stored = api.apply_set(spec, comment)
    console.print(f"cohort set {stored['name']} is at version {stored['version']}", highlight=False)


@cohort_app.command("explain")
def cohort_explain(
    key: Annotated[str, typer.Argument(help="the user's targeting key")],
    attr: Annotated[list[str] | None, typer.Option("--attr", "-a", help="context attribute: k=v or k:=json")] = None,
    cohort_set: SetOption = "default",
    epoch: Annotated[int | None, typer.Option(help="rotation epoch (default: current)")] = None,
    server: ServerOption = None,
    output: OutputOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show which ring a user is in and which rule put them there."""
    attributes = parse_attributes(attr or [])
    with client(server) as api:
        explanation = api.explain(cohort_set, key, attributes, epoch)
    if printed_as_data(explanation, output, as_json):
        return
    console.print(f"[bold]{key}[/bold] → [bold cyan]{explanation['ring']}[/bold cyan]  ({explanation['reason']})",
                  highlight=False, soft_wrap=True)


@cohort_app.command("estimate")
def cohort_estimate(
    cohort_set: SetOption = "default",
    key: Annotated[list[str] | None, typer.Option("--key", help="estimate over these keys instead")] = None,
    server: ServerOption = None,
    output: OutputOption = None,
    as_json: JsonOption = False,
) -> None:
    """Each ring's share of the stored usage population (what the controller sizes capacity from)."""
    with client(server) as api:
        estimate = api.estimate(cohort_set, key)
    if printed_as_data(estimate, output, as_json):
        return
    table = Table("ring", "users", "share", "cumulative",
                  title=f"{cohort_set} v{estimate['version']}, epoch {estimate['epoch']}, "
                        f"from {estimate['source']} ({estimate['population']:,} users)")
    for ring in estimate["rings"]:
        table.add_row(ring["ring"], f"{ring['count']:,}", f"{ring['share']:.1%}", f"{ring['cumulativeShare']:.1%}")
    console.print(table)


@cohort_app.command("flagd")
def cohort_flagd(cohort_set: SetOption = "default",
                 epoch: Annotated[int | None, typer.Option(help="rotation epoch (default: current)")] = None,
                 server: ServerOption = None, output: OutputOption = None) -> None:
    """Print the cohort set compiled to a flagd flag-definition document (JSON, or YAML with -o yaml)."""
    with client(server) as api:
        emit_data(api.flagd(cohort_set, epoch), output or Output.json)


@cohort_app.command("opt-in")
def cohort_opt_in(key: str, cohort_set: SetOption = "default", server: ServerOption = None) -> None:
    """Opt a user into the set's opt-in ring (early-adopter in the default set)."""
    with client(server) as api:
        api.set_opt(cohort_set, key, "in")
    console.print(f"{key} opted in to cohort set {cohort_set}", highlight=False)


@cohort_app.command("opt-out")
def cohort_opt_out(key: str, cohort_set: SetOption = "default", server: ServerOption = None) -> None:
    """Opt a user out into the set's opt-out ring (laggard in the default set)."""
    with client(server) as api:
        api.set_opt(cohort_set, key, "out")
    console.print(f"{key} opted out of cohort set {cohort_set}", highlight=False)


@cohort_app.command("opt-clear")
def cohort_opt_clear(key: str, cohort_set: SetOption = "default", server: ServerOption = None) -> None:
    """Forget a user's opt-in or opt-out."""
    with client(server) as api:
        api.clear_opt(cohort_set, key)
    console.print(f"{key}'s choice in cohort set {cohort_set} is cleared", highlight=False)


@cohort_app.command("audit")
def cohort_audit(
    subject: Annotated[str | None, typer.Option(help="e.g. cohort-set/default")] = None,
    limit: int = 20,
    server: ServerOption = None,
    output: OutputOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show the newest audit records: who changed what, and when."""
    with client(server) as api:
        records = api.audit(subject, limit)
    if printed_as_data(records, output, as_json):
        return
    table = Table("at", "actor", "action", "subject")
    for record in records:
        table.add_row(record["at"], record["actor"], record["action"], record["subject"])
    console.print(table)


@usage_app.command("ingest")
def usage_ingest(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False,
                                         help="JSON lines, one row per user: {targetingKey, metrics, lastSeenAt}")],
    server: ServerOption = None,
) -> None:
    """Upsert per-user usage aggregates, 10,000 rows a request."""
    rows: list[dict[str, Any]] = []
    stored = 0
    with client(server) as api, file.open() as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise fail(f"{file}:{number}: not JSON ({error})") from error
            if len(rows) == USAGE_BATCH_ROWS:
                stored += api.ingest_usage(rows)
                rows = []
        if rows:
            stored += api.ingest_usage(rows)
    console.print(f"stored usage of {stored:,} users")


KeyArgument = Annotated[str, typer.Argument(help="the flag key")]
CommentOption = Annotated[str | None, typer.Option(help="why, kept with the version")]
VARIANT_PARSERS: dict[str, Any] = {
    "boolean": lambda raw: {"true": True, "false": False}[raw.lower()],
    "integer": int,
    "float": float,
    "string": str,
    "object": json.loads,
}


def _variant_value(flag_type: str, pair: str) -> tuple[str, Any]:
    name, equals, raw = pair.partition("=")
    if not equals or not name:
        raise fail(f"--variant {pair}: write name=value, e.g. on=true")
    if flag_type not in VARIANT_PARSERS:
        raise fail(f"--variant {pair}: give the flag's --type first ({', '.join(VARIANT_PARSERS)})")
    try:
        value = VARIANT_PARSERS[flag_type](raw)
    except (KeyError, ValueError) as error:
        raise fail(f"--variant {pair}: {raw!r} is not a {flag_type} value") from error
    return name, value


def flag_from_options(
    base: dict[str, Any],
    *,
    key: str | None,
    flag_type: str | None,
    variants: list[str],
    default: str | None,
    cohort_set: str | None,
    rings: list[str],
    otherwise: str | None,
    json_logic: str | None,
    no_targeting: bool,
    metadata: list[str],
    flag_set: str | None,
    description: str | None,
    state: str | None,
) -> dict[str, Any]:
    """The flag `base` (a file, the current version, or nothing) with the options given applied over it.

    `--ring r=v` sets one ring's variant and leaves the others (`--ring r=` removes it), so
    promoting a ring is one option; `--variant` and `--meta` likewise add to what is there.
    """
    spec = dict(base)
    if key is not None:
        if spec.get("key", key) != key:
            raise fail(f"the file is flag {spec['key']!r}, not {key!r}; drop the key argument or fix the file")
        spec["key"] = key
    for field, value in (("type", flag_type), ("description", description), ("flagSet", flag_set),
                         ("state", state.upper() if state else None)):
        if value is not None:
            spec[field] = value
    if default is not None:
        spec["defaultVariant"] = default or None
    if variants:
        spec["variants"] = dict(spec.get("variants", {}))
        for pair in variants:
            name, value = _variant_value(str(spec.get("type")), pair)
            spec["variants"][name] = value
    if metadata:
        spec["metadata"] = {**spec.get("metadata", {}), **parse_attributes(metadata)}
    if no_targeting:
        spec.pop("targeting", None)
    if json_logic is not None:
        try:
            spec["targeting"] = {"jsonLogic": json.loads(json_logic)}
        except json.JSONDecodeError as error:
            raise fail(f"--json-logic: not JSON ({error})") from error
    if cohort_set is not None or rings or otherwise is not None:
        current = spec.get("targeting", {}).get("rings", {}) if isinstance(spec.get("targeting"), dict) else {}
        ring_variants: dict[str, str] = dict(current.get("variants", {}))
        for pair in rings:
            ring, equals, variant = pair.partition("=")
            if not equals or not ring:
                raise fail(f"--ring {pair}: write ring=variant, e.g. canary=on (ring= removes the ring)")
            if variant:
                ring_variants[ring] = variant
            else:
                ring_variants.pop(ring, None)
        mapping: dict[str, Any] = {"cohortSet": cohort_set or current.get("cohortSet", "default"),
                                   "variants": ring_variants}
        chosen_otherwise = current.get("otherwise") if otherwise is None else otherwise or None
        if chosen_otherwise is not None:
            mapping["otherwise"] = chosen_otherwise
        spec["targeting"] = {"rings": mapping}
    return spec


def _targeting_summary(spec: dict[str, Any]) -> str:
    targeting = spec.get("targeting")
    if not targeting:
        return "-"
    if "jsonLogic" in targeting:
        return "jsonLogic"
    mapping = targeting["rings"]
    by_variant: dict[str, list[str]] = {}
    for ring, variant in mapping.get("variants", {}).items():
        by_variant.setdefault(variant, []).append(ring)
    parts = [f"{','.join(rings)}→{variant}" for variant, rings in by_variant.items()]
    parts.append(f"else→{mapping.get('otherwise') or spec.get('defaultVariant') or 'code default'}")
    return f"{mapping['cohortSet']}: " + "; ".join(parts)


@flag_app.command("list")
def flag_list(server: ServerOption = None, output: OutputOption = None, as_json: JsonOption = False) -> None:
    """List flags at their current version."""
    with client(server) as api:
        items = api.list_flags()
    if printed_as_data(items, output, as_json):
        return
    table = Table("key", "type", "state", "default", "targeting", "flag set", "version")
    for item in items:
        spec = item["spec"]
        table.add_row(item["key"], spec["type"], spec["state"], spec.get("defaultVariant") or "-",
                      _targeting_summary(spec), spec.get("flagSet") or "-", str(item["version"]))
    console.print(table)


@flag_app.command("get")
def flag_get(key: KeyArgument, version: Annotated[int | None, typer.Option(help="an older version")] = None,
             server: ServerOption = None, output: OutputOption = None) -> None:
    """Print a flag (its spec and version) as JSON, or YAML with -o yaml."""
    with client(server) as api:
        emit_data(api.get_flag(key, version), output or Output.json)


@flag_app.command("set")
def flag_set(
    key: Annotated[str | None, typer.Argument(help="the flag key (or give it in the file)")] = None,
    file: Annotated[Path | None, typer.Option("--file", "-f", exists=True, dir_okay=False,
                                              help="a flag as JSON; options given as well override its fields")] = None,
    flag_type: Annotated[str | None, typer.Option("--type", help="boolean, string, integer, float or object")] = None,
    variant: Annotated[list[str] | None, typer.Option(help="name=value, e.g. on=true; repeat for each")] = None,
    default: Annotated[str | None, typer.Option(help="the default variant ('' for the app's code default)")] = None,
    cohort_set: Annotated[str | None, typer.Option("--rings", help="map the rings of this cohort set")] = None,
    ring: Annotated[list[str] | None, typer.Option(help="ring=variant, e.g. canary=on; ring= unmaps it")] = None,
    otherwise: Annotated[str | None, typer.Option(help="variant of every ring not mapped")] = None,
    json_logic: Annotated[str | None, typer.Option(help="raw flagd targeting as JSON instead of rings")] = None,
    no_targeting: Annotated[bool, typer.Option("--no-targeting", help="remove the targeting")] = False,
    meta: Annotated[list[str] | None, typer.Option(help="metadata k=v, or k:=json for numbers and booleans")] = None,
    flag_set: Annotated[str | None, typer.Option(help="flag set, for flagd selectors (flagSetId)")] = None,
    description: Annotated[str | None, typer.Option(help="what the flag is for")] = None,
    state: Annotated[str | None, typer.Option(help="ENABLED or DISABLED")] = None,
    comment: CommentOption = None,
    server: ServerOption = None,
) -> None:
    """Create a flag, or make a new version of it, from a file or from options."""
    base: dict[str, Any] = {}
    if file is not None:
        try:
            base = json.loads(file.read_text())
        except json.JSONDecodeError as error:
            raise fail(f"{file}: not JSON ({error})") from error
        if not isinstance(base, dict):
            raise fail(f"{file}: a flag is a JSON object")
    if key is None and "key" not in base:
        raise fail("give the flag key, as the argument or in the file")
    with client(server) as api:
        if file is None and key is not None:
            current = api.find_flag(key)
            base = dict(current["spec"]) if current is not None else {}
        spec = flag_from_options(
            base, key=key, flag_type=flag_type, variants=variant or [], default=default, cohort_set=cohort_set,
            rings=ring or [], otherwise=otherwise, json_logic=json_logic, no_targeting=no_targeting,
            metadata=meta or [], flag_set=flag_set, description=description, state=state,
        )
        stored = api.apply_flag(spec, comment)
    console.print(f"flag {stored['key']} is at version {stored['version']}", highlight=False)


@flag_app.command("enable")
def flag_enable(key: KeyArgument, comment: CommentOption = None, server: ServerOption = None) -> None:
    """Serve the flag's variants again."""
    with client(server) as api:
        stored = api.set_flag_enabled(key, True, comment)
    console.print(f"flag {key} is enabled (version {stored['version']})", highlight=False)


@flag_app.command("disable")
def flag_disable(key: KeyArgument, comment: CommentOption = None, server: ServerOption = None) -> None:
    """Turn the flag off: every app gets its code default."""
    with client(server) as api:
        stored = api.set_flag_enabled(key, False, comment)
    console.print(f"flag {key} is disabled (version {stored['version']})", highlight=False)


RolloutArgument = Annotated[str, typer.Argument(metavar="NAMESPACE/NAME", help="the Rollout, e.g. default/web")]
ReasonOption = Annotated[str | None, typer.Option(help="why (at most 500 characters), kept in an Event on the Rollout")]
WatchOption = Annotated[bool, typer.Option(
    "--watch", "-w", help="redraw a live board until the rollouts shown reach Succeeded, RolledBack or Failed "
    "(or Ctrl-C)")]
IntervalOption = Annotated[float, typer.Option(min=0.2, help="seconds between reads with --watch")]


def _rollout_key(target: str) -> tuple[str, str]:
    namespace, slash, name = target.partition("/")
    if not slash or not namespace or not name or "/" in name:
        raise fail(f"{target!r}: name the Rollout as NAMESPACE/NAME, e.g. default/web")
    return namespace, name


def _phase(phase: str | None) -> str:
    return _styled(phase, PHASE_STYLES)


def _watch_board(server: str | None, targets: list[tuple[str, str]] | None, namespace: str | None,
                 interval: float) -> BoardSnapshot:
    """The live board until the rollouts settle; exit 130 when Ctrl-C ended it first."""
    with client(server) as api:
        final = watch(api, targets, namespace, interval, until=settled, console=console)
    if not settled(final):
        raise typer.Exit(130)
    return final


def _no_output_with_watch(output: Output | None, as_json: bool) -> None:
    if output is not None or as_json:
        raise fail("--watch draws a live board; leave out -o/--json, or --watch to print the data once")


@rollout_app.command("list")
def rollout_list(
    namespace: Annotated[str | None, typer.Option("--namespace", "-n", help="one namespace; default every one")] = None,
    server: ServerOption = None,
    output: OutputOption = None,
    as_json: JsonOption = False,
    watching: WatchOption = False,
    interval: IntervalOption = 2.0,
) -> None:
    """List Rollouts: phase, ring, progress over the rings, old and new ready replicas against the target, the rings
    whose users have the flag, age and message."""
    if watching:
        _no_output_with_watch(output, as_json)
        _watch_board(server, None, namespace, interval)
        return
    with client(server) as api:
        items = api.list_rollouts(namespace)
    if printed_as_data(items, output, as_json):
        return
    if not items:
        console.print(f"no rollouts in namespace {namespace}" if namespace else "no rollouts", highlight=False)
        return
    console.print(rollout_table(items))


@rollout_app.command("get")
def rollout_get(
    target: RolloutArgument,
    server: ServerOption = None,
    output: OutputOption = None,
    as_json: JsonOption = False,
    watching: WatchOption = False,
    interval: IntervalOption = 2.0,
) -> None:
    """Show a Rollout: what it does now, each ring's state, replicas, the flag's rings, the current ring's gates,
    conditions and the recent history. --watch: a live board, exiting 0 once it has Succeeded and 1 once it has
    RolledBack or Failed."""
    namespace, name = _rollout_key(target)
    if watching:
        _no_output_with_watch(output, as_json)
        with client(server) as api:
            api.get_rollout(namespace, name)  # a Rollout that is not there fails now, not on the board
        final = _watch_board(server, [(namespace, name)], None, interval)
        phase = final.rollouts[0]["phase"]
        if phase != "Succeeded":
            raise fail(f"{target} is {phase}: {final.rollouts[0]['message']}")
        return
    with client(server) as api:
        rollout = api.get_rollout(namespace, name)
    if printed_as_data(rollout, output, as_json):
        return
    console.print(rollout_detail(rollout, datetime.now(UTC)))


def _styled(value: str | None, styles: dict[str, str]) -> str:
    if value is None:
        return "[dim]-[/dim]"
    return f"[{styles.get(value, 'default')}]{escape(value)}[/]"


@rollout_app.command("gates")
def rollout_gates(
    target: RolloutArgument,
    queries: Annotated[bool, typer.Option("--queries", "-q", help="show the queries each measurement sent")] = False,
    limit: Annotated[int | None, typer.Option(min=1, max=5000, help="the latest N measurements; default 500")] = None,
    server: ServerOption = None,
    output: OutputOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show a Rollout's gates: where each gate of the ring being baked stands, and the measurements kept."""
    namespace, name = _rollout_key(target)
    with client(server) as api:
        answer = api.rollout_gates(namespace, name, limit)
    if printed_as_data(answer, output, as_json):
        return
    console.print(f"[bold]{namespace}/{name}[/bold]  {_phase(answer['phase'])}  ring {answer['currentRing'] or '-'}",
                  highlight=False)
    # Fold rather than cut names, numbers and queries when the terminal is narrow: they are what is read.
    gates = Table(Column("GATE", overflow="fold"), "KIND", "RING", "PHASE", "MEASURED", "PASS/FAIL/INC", "LAST",
                  Column("VALUES", overflow="fold"), "NEXT", title="gates", box=None)
    for gate in answer["gates"]:
        last = gate.get("last") or {}
        gates.add_row(escape(gate["name"]), gate["kind"], gate["ring"], _styled(gate["phase"], GATE_PHASE_STYLES),
                      str(gate["measurements"]), f"{gate['passed']}/{gate['failed']}/{gate['inconclusive']}",
                      _styled(last.get("verdict"), VERDICT_STYLES), escape(values_text(last.get("values") or {})),
                      when(gate.get("nextAt")))
    history = Table("AT", "REVISION", "RING", Column("GATE", overflow="fold"), "VERDICT",
                    Column("MESSAGE", overflow="fold"), *([Column("QUERIES", overflow="fold")] if queries else []),
                    title="measurements", box=None)
    for entry in answer["history"]:
        row = [when(entry["at"]), entry["revision"], entry["ring"], escape(entry["gate"]),
               _styled(entry["verdict"], VERDICT_STYLES), escape(entry["message"] or "-")]
        history.add_row(*row, *([escape("\n".join(entry["queries"]))] if queries else []))
    if gates.row_count:
        console.print(gates)
    else:
        console.print("  no gate is being judged: no ring is baking, or its ring has no gates", highlight=False)
    if history.row_count:
        console.print(history)
    else:
        console.print("  no measurements recorded", highlight=False)


def _act(action: str, target: str, reason: str | None, server: str | None) -> None:
    namespace, name = _rollout_key(target)
    with client(server) as api:
        answer = api.act_on_rollout(namespace, name, action, reason)
    requested = f"{REQUEST_ANNOTATION}={answer['request']}"
    done = {"pause": "spec.paused is true", "resume": f"spec.paused is false and {requested}"}.get(action, requested)
    console.print(f"{namespace}/{name} ({answer['phase'] or 'no status yet'}): {done}; the controller acts on it at "
                  "its next reconcile", highlight=False, soft_wrap=True)


@rollout_app.command("promote")
def rollout_promote(target: RolloutArgument, reason: ReasonOption = None, server: ServerOption = None) -> None:
    """End the current ring's bake now; the rollout moves to the next ring."""
    _act("promote", target, reason, server)


@rollout_app.command("pause")
def rollout_pause(target: RolloutArgument, reason: ReasonOption = None, server: ServerOption = None) -> None:
    """Freeze the rollout (spec.paused: true): nothing scales, the flag stays, bake time stands still."""
    _act("pause", target, reason, server)


@rollout_app.command("resume")
def rollout_resume(target: RolloutArgument, reason: ReasonOption = None, server: ServerOption = None) -> None:
    """Unfreeze the rollout: spec.paused false, and clear a pause set by the failure policy."""
    _act("resume", target, reason, server)


@rollout_app.command("abort")
def rollout_abort(target: RolloutArgument, reason: ReasonOption = None, server: ServerOption = None) -> None:
    """Roll back: the flag off for every ring, the old capacity back, the new removed."""
    _act("abort", target, reason, server)


@rollout_app.command("retry")
def rollout_retry(target: RolloutArgument, reason: ReasonOption = None, server: ServerOption = None) -> None:
    """Start a rolled-back rollout again from the first ring; retry a failure-policy pause or a Failed rollback."""
    _act("retry", target, reason, server)


RootOption = Annotated[Path | None, typer.Option("--root", help="cluster folder; default <data dir>/localcluster")]


@localcluster_app.command("up")
def localcluster_up(
    root: RootOption = None,
    simulator: Annotated[bool, typer.Option(help="run the node simulator (pods never start without it)")] = True,
    prometheus: Annotated[bool, typer.Option(help="run Prometheus, scraping the simulated pods")] = True,
) -> None:
    """Start the local control plane (if it is not running) and wait until the API answers."""
    from rollout.localcluster.cluster import LocalCluster, LocalClusterError

    started = time.monotonic()
    try:
        status = LocalCluster(root).up(simulator=simulator, prometheus=prometheus)
    except LocalClusterError as error:
        raise fail(str(error)) from error
    console.print(f"local control plane is up at {status.apiserver_url} ({time.monotonic() - started:.1f} s)",
                  highlight=False)
    console.print(f"  export KUBECONFIG={status.kubeconfig}", highlight=False)
    if status.prometheus_url:
        console.print(f"  Prometheus at {status.prometheus_url}", highlight=False)


@localcluster_app.command("down")
def localcluster_down(root: RootOption = None) -> None:
    """Stop exactly the processes `up` started."""
    from rollout.localcluster.cluster import LocalCluster

    stopped = LocalCluster(root).down()
    console.print(f"stopped {', '.join(stopped)}" if stopped else "nothing was running", highlight=False)


@localcluster_app.command("status")
def localcluster_status(root: RootOption = None, output: OutputOption = None, as_json: JsonOption = False) -> None:
    """Show which of the control plane's processes run and whether the API answers; exit 1 when it does not."""
    from rollout.localcluster.cluster import LocalCluster

    status = LocalCluster(root).status()
    if printed_as_data({"root": str(status.root), "apiReady": status.api_ready, "apiserverUrl": status.apiserver_url,
                        "kubeconfig": str(status.kubeconfig), "prometheusUrl": status.prometheus_url or None,
                        "running": status.running, "stopped": status.stopped}, output, as_json):
        if not status.api_ready:
            raise typer.Exit(1)
        return
    for name, pid in status.running.items():
        console.print(f"  {name:<24} running (pid {pid})", highlight=False)
    for name in status.stopped:
        console.print(f"  {name:<24} not running", highlight=False)
    if not status.api_ready:
        raise fail(f"the local control plane in {status.root} is not answering; start it with "
                   "`ringmaster localcluster up`")
    console.print(f"API ready at {status.apiserver_url}; kubeconfig {status.kubeconfig}", highlight=False,
                  soft_wrap=True)
    if status.prometheus_url:
        console.print(f"Prometheus at {status.prometheus_url}", highlight=False, soft_wrap=True)


@localcluster_app.command("kubeconfig")
def localcluster_kubeconfig(root: RootOption = None) -> None:
    """Print the path of the local control plane's kubeconfig."""
    from rollout.localcluster.cluster import LocalCluster

    sys.stdout.write(f"{LocalCluster(root).kubeconfig}\n")


# The andon cord

andon_app = typer.Typer(help="The andon cord: stop every rollout at once (or a namespace's, or one), and release it.",
                        no_args_is_help=True)
app.add_typer(andon_app, name="andon")
ReasonRequired = Annotated[str, typer.Option("--reason", "-r", help="why (3 to 500 characters); required")]


def _scope_text(scope: dict[str, Any]) -> str:
    if scope["kind"] == "global":
        return "every rollout"
    if scope["kind"] == "namespace":
        return f"namespace {scope['namespace']}"
    return f"rollout {scope['namespace']}/{scope['rollout']}"


@andon_app.command("pull")
def andon_pull(
    reason: ReasonRequired,
    namespace: Annotated[str | None, typer.Option("--namespace", "-n", help="halt only this namespace's rollouts")]
    = None,
    rollout: Annotated[str | None, typer.Option("--rollout", help="halt only this rollout, as NAMESPACE/NAME")] = None,
    server: ServerOption = None,
    output: OutputOption = None,
    as_json: JsonOption = False,
) -> None:
    """Pull the cord: every rollout in scope halts (no scaling, no flag change, no promotion) until released."""
    if namespace and rollout:
        raise fail("give --namespace or --rollout NAMESPACE/NAME, not both")
    rollout_namespace, rollout_name = _rollout_key(rollout) if rollout else (namespace, None)
    with client(server) as api:
        pulled = api.andon_pull(reason, rollout_namespace, rollout_name)
    if printed_as_data(pulled, output, as_json):
        return
    console.print(f"[bold red]pulled[/bold red] the andon cord over {_scope_text(pulled['scope'])}: pull "
                  f"{pulled['id']}; release it with `ringmaster andon release {pulled['id']} --reason ...`",
                  highlight=False, soft_wrap=True)


@andon_app.command("release")
def andon_release(
    pull_id: Annotated[int | None, typer.Argument(help="the pull to release; default the only active one")] = None,
    reason: ReasonRequired = "",
    server: ServerOption = None,
    output: OutputOption = None,
    as_json: JsonOption = False,
) -> None:
    """Release a pull: the rollouts it halted go on where they stopped."""
    if not reason.strip():
        raise fail("--reason is required: say why the line may go on")
    with client(server) as api:
        if pull_id is None:
            active = api.andon_status()["active"]
            if len(active) != 1:
                raise fail("no pull is active" if not active else
                           f"{len(active)} pulls are active ({', '.join(str(item['id']) for item in active)}); "
                           "name the one to release")
            pull_id = int(active[0]["id"])
        released = api.andon_release(pull_id, reason)
    if printed_as_data(released, output, as_json):
        return
    console.print(f"released pull {released['id']} ({_scope_text(released['scope'])}, pulled by "
                  f"{released['actor']}: {released['reason']})", highlight=False, soft_wrap=True)


@andon_app.command("status")
def andon_status(server: ServerOption = None, output: OutputOption = None, as_json: JsonOption = False,
                 history: Annotated[int, typer.Option(help="also show the last N pulls and releases")] = 0) -> None:
    """Show the active pulls (who, when, why, over what), and with --history the record."""
    with client(server) as api:
        cord = api.andon_status()
        events = api.andon_history(history) if history else []
    if printed_as_data({**cord, "history": events} if history else cord, output, as_json):
        return
    if not cord["active"]:
        console.print("[green]the line runs[/green]: no pull is active", highlight=False)
    else:
        table = Table("PULL", "SCOPE", "BY", "WHEN", "VIA", Column("REASON", overflow="fold"),
                      title="[bold red]the andon cord is pulled[/bold red]", box=None)
        for item in cord["active"]:
            table.add_row(str(item["id"]), _scope_text(item["scope"]), escape(item["actor"]), when(item["at"]),
                          item["via"], escape(item["reason"]))
        console.print(table)
    if events:
        record = Table("ID", "KIND", "PULL", "SCOPE", "BY", "WHEN", Column("REASON", overflow="fold"),
                       title="record", box=None)
        for event in events:
            record.add_row(str(event["id"]), event["kind"], str(event["pullId"]), _scope_text(event["scope"]),
                           escape(event["actor"]), when(event["at"]), escape(event["reason"]))
        console.print(record)


# Everything on one machine

DataDirOption = Annotated[Path | None, typer.Option(
    "--data-dir", envvar="RINGMASTER_DATA_DIR", help="where the database, the control plane and the logs live; "
    "default ./.ringmaster")]


def _local_system(data_dir: Path | None, port: int, sync_port: int, controller_metrics_port: int) -> Any:
    from cohorts.db import DEFAULT_DATA_DIR
    from rollout.up import LocalSystem, UpSettings

    settings = UpSettings(data_dir=data_dir or Path(DEFAULT_DATA_DIR), port=port, sync_port=sync_port,
                          controller_metrics_port=controller_metrics_port)
    return LocalSystem(settings, console)


@app.command("up")
def up(
    data_dir: DataDirOption = None,
    port: Annotated[int, typer.Option(help="port of the API and the dashboard")] = 8080,
    sync_port: Annotated[int, typer.Option(help="port of flagd's sync gRPC service")] = DEFAULT_SYNC_PORT,
    controller_metrics_port: Annotated[int, typer.Option(help="port of the controller's /metrics")] = 8090,
) -> None:
    """Start everything on this machine: the local control plane, Prometheus, `serve` on SQLite, `controller` and a
    sample application with simulated traffic. Ctrl-C stops exactly what it started."""
    from rollout.up import print_summary, run_until_interrupted

    system = _local_system(data_dir, port, sync_port, controller_metrics_port)
    code = 0
    try:
        with system:
            console.print("[bold green]Ringmaster is up[/]; Ctrl-C stops what `ringmaster up` started", highlight=False)
            print_summary(system, console)
            code = run_until_interrupted(system, console)
            console.print("stopping…", highlight=False)
    except Exception as error:
        from rollout.up import failure_text

        raise fail(failure_text(error)) from error
    raise typer.Exit(code)


@app.command("demo")
def demo(
    data_dir: DataDirOption = None,
    port: Annotated[int, typer.Option(help="port of the API and the dashboard; a free one if it is taken")] = 8080,
    keep: Annotated[bool, typer.Option(help="keep everything running after the story, until Ctrl-C")] = False,
) -> None:
    """Play three releases on `ringmaster up`: a good one through all four rings, a bad one caught by a gate and rolled
    back, and one halted by the andon cord and resumed. Exits 0 only if the story played out as it should."""
    from rollout.demo import play
    from rollout.localcluster.prometheus import free_port
    from rollout.up import choose_port, print_summary, run_until_interrupted

    system = _local_system(data_dir, choose_port(port), free_port(), free_port())
    try:
        with system:
            started = time.monotonic()
            console.print(f"the dashboard is at [bold]{system.dashboard_url}[/] while the demo runs", highlight=False)
            outcomes = play(system, console)
            played = len(outcomes) == 3 and all(outcome.played for outcome in outcomes)
            ending = "[bold green]the story played out" if played else "[bold red]the story did not play out"
            console.print(f"\n{ending}[/] in {time.monotonic() - started:.0f} s", highlight=False)
            if keep:
                print_summary(system, console)
                run_until_interrupted(system, console)
    except Exception as error:
        from rollout.up import failure_text

        raise fail(failure_text(error)) from error
    if not played:
        raise typer.Exit(1)
