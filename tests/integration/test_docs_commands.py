"""The commands, flags, settings and BEIRAN_* variables the README, the plugins' READMEs and the
deploy examples (systemd unit, Kubernetes manifest and Dockerfile, the example config) show still
exist in the CLI and the config, so that an example a user copies does not fail on a renamed flag.
Static and fast: nothing runs but click's parser and the config loader (every wheel installed)."""

from __future__ import annotations

import json
import os
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from beiran.cli.main import cli
from beiran.config import Config, load_config
from beiran.config_env import NOT_SETTINGS, env_unknown, is_setting_var


def repo_root() -> Path:
    env = os.environ.get("BEIRAN_TEST_REPO")
    return Path(env) if env else Path(__file__).resolve().parents[2]


ROOT = repo_root()
DOCS = ["README.md", "beiran_plugins/docker/README.md", "beiran_plugins/npm/README.md", "contrib/k8s/README.md",
        "contrib/k8s-kubelet.md"]
SHELL_ENDS = {"&&", "||", ";", ">", ">>", "2>", "2>&1", "<"}
#: words that are no command, after `beiran` in prose (`kubectl -n beiran exec`, `systemctl reload beiran`)
CLI_START = re.compile(r"(?<!\s-[a-zA-Z])(?<!namespace)(^|\s|/bin/|\$\s|--\s)beiran(\s|$)")


def option_names(cmd: click.Command) -> dict[str, click.Option]:
    return {name: p for p in cmd.params if isinstance(p, click.Option) for name in (*p.opts, *p.secondary_opts)}


def check_invocation(argv: list[str], full: bool) -> list[str]:
    """Problems with `beiran ARGV`: the command path must exist and every flag be one of its
    options; with `full` (a concrete example, no placeholders) click must parse it as it stands."""
    problems: list[str] = []
    cmd: click.Command = cli
    ctx = click.Context(cli, info_name="beiran")
    path = ["beiran"]
    i = 0
    while i < len(argv):
        word = argv[i]
        if word in SHELL_ENDS or word == "...":
            return problems
        if word.startswith("-"):
            name = word.split("=", 1)[0]
            opt = option_names(cmd).get(name)
            if opt is None and name not in ("-h", "--help"):
                problems.append(f"`{' '.join(path)}` has no option {name}")
            i += 1 + (opt is not None and not opt.is_flag and "=" not in word)
            continue
        if not isinstance(cmd, click.Group):
            break
        sub = cmd.get_command(ctx, word)
        if sub is None:
            alternatives = [w for w in re.split(r"[|/]", word) if w]
            if len(alternatives) > 1:  # `beiran node list|info|probe`
                problems += [f"`{' '.join(path)}` has no command {w!r}" for w in alternatives
                             if cmd.get_command(ctx, w) is None]
            else:
                problems.append(f"`{' '.join(path)}` has no command {word!r}")
            return problems
        cmd, ctx = sub, click.Context(sub, info_name=word, parent=ctx)
        path.append(word)
        i += 1
    depth = 0
    for word in argv[i:]:  # the leaf's arguments and options: [--all | --node UUID] included
        if word in SHELL_ENDS or (word == "|" and depth == 0):
            break
        depth += word.count("[") - word.count("]")
        bare = word.strip("[]()")
        if re.match(r"^--?[a-zA-Z]", bare):
            name = bare.split("=", 1)[0]
            if name not in option_names(cmd) and name not in ("-h", "--help"):
                problems.append(f"`{' '.join(path)}` has no option {name}")
    if full and not problems:
        args = argv
        end = next((k for k, w in enumerate(args) if w in SHELL_ENDS or w == "|"), len(args))
        try:
            parse(args[:end])
        except click.ClickException as exc:
            problems.append(f"`beiran {' '.join(args[:end])}`: {exc.format_message()}")
    return problems


def parse(args: list[str]) -> None:
    """click's own parse of `beiran ARGS`, down to the leaf command, running nothing."""
    cmd: click.Command = cli
    ctx = cli.make_context("beiran", list(args))
    while isinstance(cmd, click.Group):
        rest = [*ctx._protected_args, *ctx.args]
        if not rest:
            return
        name, sub, rest = cmd.resolve_command(ctx, rest)
        assert sub is not None and name is not None
        cmd, ctx = sub, sub.make_context(name, rest, parent=ctx)


def split(line: str) -> list[str]:
    try:
        return shlex.split(line, comments=True)
    except ValueError:  # an inline span cut inside a quoted JSON example
        return line.split("#", 1)[0].split()


def fenced_blocks(text: str) -> tuple[list[tuple[str, str]], str]:
    """([(language, body)] of the ``` blocks, the prose around them)."""
    blocks: list[tuple[str, str]] = []
    prose: list[str] = []
    lang: str | None = None
    body: list[str] = []
    indented = False
    for line in text.splitlines():
        fence = re.match(r"^\s*```(\S*)\s*$", line)
        indented = indented and lang is None and line.startswith("    ")
        if fence and lang is None:
            lang, body = fence.group(1), []
        elif fence:
            blocks.append((lang, "\n".join(body) + "\n"))
            lang = None
        elif lang is None and line.startswith("    ") and (not prose or not prose[-1].strip() or indented):
            blocks.append(("", line[4:] + "\n"))  # an indented code block, a line at a time
            indented = True
            continue
        elif lang is None:
            prose.append(line)
        else:
            body.append(line)
    return blocks, "\n".join(prose)


def invocations(text: str) -> list[tuple[list[str], bool]]:
    """(argv after `beiran`, whether it is a concrete example) for every `beiran ...` in code."""
    found = []
    blocks, prose = fenced_blocks(text)
    shell = [line for lang, body in blocks if lang in ("", "sh", "bash", "console", "shell")
             for line in body.splitlines()]
    prose = re.sub(r"(?<!\n)\n(?!\n)", " ", prose)  # a code span may wrap across lines
    inline = re.findall(r"(?<!`)`([^`]+)`(?!`)", prose)
    for chunk, concrete in [(line, True) for line in shell] + [(span, False) for span in inline]:
        for m in CLI_START.finditer(chunk):
            words = split(chunk[m.start():].lstrip("$-/ "))
            words = words[1:] if words and words[0].endswith("beiran") else words
            if not words or not re.match(r"^[a-z-]", words[0]):
                continue
            placeholder = any(re.search(r"[\[\]]|\.\.\.|^[A-Z][A-Z_]+(?:[=@][A-Z_\[\]|.]+)?$|<", w) for w in words)
            found.append((words, concrete and not placeholder))
    return found


@pytest.mark.parametrize("doc", DOCS)
def test_every_beiran_command_a_document_shows_exists(doc):
    text = (ROOT / doc).read_text()
    calls = invocations(text)
    assert calls, f"no `beiran ...` found in {doc}: the extraction is broken"
    problems = sorted({p for argv, full in calls for p in check_invocation(argv, full)})
    assert problems == [], f"{doc}:\n" + "\n".join(problems)


def test_the_checker_catches_a_renamed_flag_or_command():
    """A checker that cannot fail is no check."""
    assert check_invocation(["docker", "preheat", "x", "--node", "all"], True) == [
        "`beiran docker preheat` has no option --node"]
    assert check_invocation(["nodes", "list"], False) == ["`beiran` has no command 'nodes'"]
    assert check_invocation(["node", "list|info|probes"], False) == ["`beiran node` has no command 'probes'"]
    assert check_invocation(["blobs", "fetch"], True) == ["`beiran blobs fetch`: Missing argument 'DIGEST'."]
    assert check_invocation(["docker", "images", "[--all", "|", "--nod", "UUID]"], False) == [
        "`beiran docker images` has no option --nod"]
    assert invocations("run `kubectl -n beiran exec ds/beiran -- beiran node list` now") == [
        (["node", "list"], False)]


def test_scripts_daemon_examples_are_daemon_flags():
    """scripts/daemon passes its arguments to `beiran daemon`: its header and the README's quick
    start show some."""
    text = (ROOT / "scripts" / "daemon").read_text() + (ROOT / "README.md").read_text()
    examples = [split(m) for m in re.findall(r"scripts/daemon ((?:--[a-z-]+[ =]\S+ ?)+)", text)]
    assert len(examples) >= 3
    for args in examples:
        parse(["daemon", *args])


def test_systemd_unit_runs_the_installed_cli_with_existing_flags():
    unit = (ROOT / "contrib" / "beiran.service").read_text()
    start = re.search(r"^ExecStart=(.*)$", unit, re.M)
    assert start
    argv = split(start.group(1))
    install = (ROOT / "scripts" / "install").read_text()
    venv = re.search(r"^VENV=\$\{BEIRAN_VENV:-(\S+?)\}|^VENV=(\S+)", install, re.M)
    assert venv, "scripts/install names no venv"
    assert argv[0] == f"{venv.group(1) or venv.group(2)}/bin/beiran", argv
    parse(argv[1:])
    etc = re.search(r"^ETC_DIR=(\S+)", install, re.M)
    assert etc and argv[argv.index("--config") + 1] == f"{etc.group(1)}/config.toml", \
        "the unit's --config is not where scripts/install puts the config"
    # the unit's RuntimeDirectory/StateDirectory are the example config's run_dir/data_dir
    cfg = load_config(ROOT / "contrib" / "config.example.toml", environ={})
    assert f"RuntimeDirectory={cfg.run_dir.name}" in unit and str(cfg.run_dir).startswith("/run/")
    assert f"StateDirectory={cfg.data_dir.name}" in unit and str(cfg.data_dir).startswith("/var/lib/")


def test_example_config_commented_settings_are_settings(tmp_path):
    """Each `# key = value` the example config shows as an option still loads when uncommented."""
    lines = (ROOT / "contrib" / "config.example.toml").read_text().splitlines()
    tried = 0
    for n, line in enumerate(lines):
        m = re.match(r"^# ?([a-z_]+ = .*?)(?:\s+#.*)?$", line)
        if not m or line.startswith("# ["):
            continue
        section = next((s for s in reversed(lines[:n]) if re.match(r"^\[[a-z0-9_.\"]+\]", s)), "")
        uncommented = tmp_path / f"line{n}.toml"
        uncommented.write_text("\n".join([*lines[:n], m.group(1), *lines[n + 1:]]) + "\n")
        try:
            tomllib.loads(uncommented.read_text())
        except tomllib.TOMLDecodeError:
            continue  # prose that happens to look like an assignment
        tried += 1
        if section.startswith("[plugins"):
            continue  # plugin sections are checked by their plugin, at start-up
        load_config(uncommented, environ={})
    assert tried >= 5


def k8s_docs() -> dict[str, Any]:
    return {d["kind"]: d for d in yaml.safe_load_all((ROOT / "contrib" / "k8s" / "beiran.yaml").read_text()) if d}


def test_k8s_manifest_commands_env_and_config(tmp_path):
    docs = k8s_docs()
    spec = docs["DaemonSet"]["spec"]["template"]["spec"]
    containers = spec["initContainers"] + spec["containers"]
    config = docs["ConfigMap"]["data"]["config.toml"]
    mounted = {m["mountPath"] for c in containers for m in c.get("volumeMounts", [])}
    for c in containers:
        assert c["command"][0] == "beiran", c["command"]
        parse(c["command"][1:])
        if "--config" in c["command"]:
            assert os.path.dirname(c["command"][c["command"].index("--config") + 1]) in mounted
    env: dict[str, str] = {}
    for c in spec["containers"]:
        for var in c.get("env", []):
            name = var["name"]
            if name.startswith("BEIRAN_"):
                assert name in NOT_SETTINGS or name == "BEIRAN_SOCKET" or (
                    is_setting_var(name) and env_unknown(Config, name[7:].lower().split("__")) is None), name
                env[name] = str(var.get("value", "token-from-the-secret")).replace("$(POD_IP)", "10.0.0.7")
    cfg = load_config(_write(config, tmp_path), environ=env)
    assert cfg.advertise == "10.0.0.7:8888" and cfg.cluster_token == "token-from-the-secret"
    assert str(cfg.socket_path) == env["BEIRAN_SOCKET"]
    assert str(cfg.data_dir) in mounted and str(cfg.run_dir) in mounted
    assert cfg.plugin_section("k8s")["socket"].startswith(str(cfg.run_dir))
    # probes and the scrape annotation use the port the daemon listens on
    port = cfg.listen_port
    for c in spec["containers"]:
        for probe in ("readinessProbe", "livenessProbe"):
            assert c[probe]["httpGet"]["port"] == port
    annotations = docs["DaemonSet"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(port)


def test_dockerfile_cmd_is_the_manifests_command():
    dockerfile = (ROOT / "contrib" / "k8s" / "Dockerfile").read_text()
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", dockerfile, re.M).group(1))
    parse(cmd[1:])
    containers = k8s_docs()["DaemonSet"]["spec"]["template"]["spec"]["containers"]
    assert cmd == containers[0]["command"]


def test_readme_toml_and_environment_examples_load(tmp_path):
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"^```toml\n(.*?)^```", readme, re.S | re.M)
    assert blocks
    for block in blocks:
        load_config(_write(block, tmp_path), environ={})
    env_blocks = [b for b in re.findall(r"^```sh\n(.*?)^```", readme, re.S | re.M) if "BEIRAN_" in b]
    assert env_blocks
    for block in env_blocks:
        for line in block.splitlines():
            m = re.match(r"^(BEIRAN_[A-Z_]+)=(\S+)", line)
            if m and is_setting_var(m.group(1)) and m.group(1) != "BEIRAN_SOCKET":
                load_config(environ={m.group(1): m.group(2)})


def _write(text: str, where: Path) -> Path:
    path = where / f"config-{len(list(where.iterdir()))}.toml"
    path.write_text(text)
    return path


def core_settings() -> set[str]:
    """Every core setting as a dotted key (plugin sections and the test hooks aside)."""
    from dataclasses import fields, is_dataclass

    from beiran.config import Config

    keys = set()
    hints = typing_hints(Config)
    for f in fields(Config):
        if f.name in ("source_file", "testing", "plugins"):
            continue
        kind = hints[f.name]
        if isinstance(kind, type) and is_dataclass(kind):
            keys |= {f"{f.name}.{g.name}" for g in fields(kind)}
        else:
            keys.add(f.name)
    return keys


def typing_hints(cls: type) -> dict[str, Any]:
    import typing

    return typing.get_type_hints(cls)


def test_readme_config_table_lists_every_setting():
    section = (ROOT / "README.md").read_text().split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    listed = set()
    for line in section.splitlines():
        m = re.match(r"^\| (`[^|]*`) \|", line)
        table = None
        for span in re.findall(r"`([^`]+)`", m.group(1)) if m else []:
            head = re.match(r"^\[([a-z_]+)\]\s*(\S*)$", span)
            if head:
                table = head.group(1)
                listed.add(f"{table}.{head.group(2)}" if head.group(2) else table)
            elif not span.startswith("[plugins"):
                listed.add(f"{table}.{span}" if table else span)
    assert listed == core_settings(), (f"in the README's table but no setting: {sorted(listed - core_settings())}; "
                                       f"settings the table lacks: {sorted(core_settings() - listed)}")


def test_example_config_shows_every_setting():
    """contrib/config.example.toml says it shows every value: each core setting is there, set or
    commented out."""
    shown = set()
    table = ""
    for line in (ROOT / "contrib" / "config.example.toml").read_text().splitlines():
        head = re.match(r"^#? ?\[([a-z0-9_.\"]+)\]", line)
        if head:
            table = head.group(1)
            continue
        m = re.match(r"^#? ?([a-z_]+) = ", line)
        if m and not table.startswith("plugins"):
            shown.add(f"{table}.{m.group(1)}" if table and table != "origins" else table or m.group(1))
    missing = core_settings() - shown
    assert not missing, f"contrib/config.example.toml lacks {sorted(missing)}"


def test_readme_names_every_daemon_flag():
    readme = re.sub(r"\s+", " ", (ROOT / "README.md").read_text())
    sentence = re.search(r"Flags of `beiran daemon`: (.*?)\. ", readme)
    assert sentence
    named = set(re.findall(r"`(--[a-z-]+)`", sentence.group(1)))
    daemon = cli.get_command(click.Context(cli), "daemon")
    assert daemon is not None
    assert named == {o for o in option_names(daemon) if o != "--help"}


def test_every_command_and_option_says_what_it_is():
    """`--help` everywhere: each command (every plugin's too) has a description, each option a help
    text and a metavar more telling than click's TEXT or INTEGER."""
    missing = []

    def walk(cmd: click.Command, path: list[str], parent: click.Context | None) -> None:
        ctx = click.Context(cmd, info_name=path[-1], parent=parent)
        if not (cmd.help or "").strip():
            missing.append(f"`{' '.join(path)}` has no help")
        for p in cmd.params:
            if isinstance(p, click.Option) and "--help" not in p.opts:
                if not p.help:
                    missing.append(f"`{' '.join(path)} {p.opts[0]}` has no help")
                if not p.is_flag and p.make_metavar(ctx) in ("TEXT", "INTEGER", "FLOAT"):
                    missing.append(f"`{' '.join(path)} {p.opts[0]}` shows {p.make_metavar(ctx)}")
        if isinstance(cmd, click.Group):
            for name in cmd.list_commands(ctx):
                sub = cmd.get_command(ctx, name)
                assert sub is not None
                walk(sub, [*path, name], ctx)

    walk(cli, ["beiran"], None)
    assert missing == []


def plugin_settings() -> dict[str, set[str]]:
    """Each plugin's own setting names (what its init accepts in [plugins.<name>])."""
    from dataclasses import fields

    from beiran_plugins.apt.config import AptConfig
    from beiran_plugins.dns.settings import Settings as DnsSettings
    from beiran_plugins.docker.plugin import SETTINGS as DOCKER
    from beiran_plugins.k8s.plugin import SETTINGS as K8S
    from beiran_plugins.npm.plugin import SETTINGS as NPM
    from beiran_plugins.zeroconf.settings import Settings as ZeroconfSettings

    return {"apt": {f.name for f in fields(AptConfig)}, "dns": {f.name for f in fields(DnsSettings)} | {"enabled"},
            "zeroconf": {f.name for f in fields(ZeroconfSettings)} | {"enabled"},
            "docker": set(DOCKER), "k8s": set(K8S), "npm": set(NPM)}


def plugin_keys_shown() -> list[tuple[str, str, str]]:
    """(where, plugin, key) for every [plugins.<name>] key the documents and examples show: their
    TOML blocks, the manifest's ConfigMap, the example config (commented-out keys too) and the
    plugins' README tables of settings."""
    shown: list[tuple[str, str, str]] = []

    def from_toml(where: str, text: str) -> None:
        table = ""
        for line in text.splitlines():
            head = re.match(r"^#? ?\[([a-z0-9_.]+)(?:\.\"[^\"]*\")?\]", line)
            if head:
                table = head.group(1) if '"' not in line else ""  # registries."x": a nested table
                continue
            key = re.match(r"^#? ?([a-z_]+) = ", line)
            parts = table.split(".")
            if key and len(parts) == 2 and parts[0] == "plugins":
                shown.append((where, parts[1], key.group(1)))

    for doc in DOCS:
        text = (ROOT / doc).read_text()
        for lang, body in fenced_blocks(text)[0]:
            if lang == "toml":
                from_toml(doc, body)
        for name, key in re.findall(r"`\[plugins\.(\w+)\] ?([a-z_]+)", text):  # prose: `[plugins.apt] listen`
            shown.append((doc, name, key))
        plugin = re.match(r"beiran_plugins/(\w+)/", doc)
        if plugin:  # a plugin README's "| key | default |" table
            for rows in re.findall(r"^\| key \|.*?\n((?:\|.*\n)+)", text, re.M):
                for row in rows.splitlines()[1:]:
                    for key in re.findall(r"`([a-z_]+)`", row.split("|")[1]):
                        shown.append((doc, plugin.group(1), key))
    from_toml("contrib/config.example.toml", (ROOT / "contrib" / "config.example.toml").read_text())
    from_toml("contrib/k8s/beiran.yaml", k8s_docs()["ConfigMap"]["data"]["config.toml"])
    return shown


def test_documented_plugin_settings_are_settings():
    known = plugin_settings()
    shown = plugin_keys_shown()
    assert {p for _, p, _ in shown} == set(known), "the extraction missed a plugin's settings"
    wrong = sorted({f"{where}: [plugins.{p}] {k}" for where, p, k in shown if k not in known[p]})
    assert wrong == []


def test_no_command_listing_is_cut_short():
    """`beiran --help` and each group's help list their commands on one line each: a description
    click has to cut ("... the apt configuration that sends...") says nothing."""
    cut = []

    def walk(group: click.Group, path: list[str], parent: click.Context | None) -> None:
        ctx = click.Context(group, info_name=path[-1], parent=parent)
        names = group.list_commands(ctx)
        limit = 78 - 6 - max(len(n) for n in names)  # click's help formatter, 80 columns
        for name in names:
            sub = group.get_command(ctx, name)
            assert sub is not None
            if sub.get_short_help_str(limit).endswith("..."):
                cut.append(f"`{' '.join([*path, name])}`: {sub.get_short_help_str(limit)}")
            if isinstance(sub, click.Group):
                walk(sub, [*path, name], ctx)

    walk(cli, ["beiran"], None)
    assert cut == []
