"""A typo in any plugin's section reads the same way: the plugin stops with one line naming the
key and listing the settings it knows (docker and k8s listed none; dns and zeroconf named one
key of several), and the daemon and the other plugins go on."""

from __future__ import annotations

PLUGINS = ("apt", "dns", "docker", "k8s", "npm", "zeroconf")


def test_every_plugin_names_a_typod_setting_and_what_it_knows(cluster):
    # k8s needs docker: it is tried on a second node, with docker's section right
    for names in ([n for n in PLUGINS if n != "k8s"], ["k8s"]):
        node = cluster.add({"plugins": {name: {"colour": "blue", "zcolour": 1} for name in names}}, peers=None)
        status = {p["name"]: p for p in node.api("GET", "/status")["plugins"]}
        for name in names:
            assert status[name]["status"] == "error", (name, status[name])
            error = status[name]["error"]
            prefix = f"init failed: [plugins.{name}]: unknown setting(s) colour, zcolour (known: "
            assert error.startswith(prefix) and error.endswith(")"), error
            known = error[len(prefix):-1].split(", ")
            assert len(known) >= 2 and known == sorted(known) and "enabled" not in known, error
        assert node.api("GET", "/ping")["pong"] is True


def test_config_local_checks_plugin_sections_without_a_daemon(tmp_path):
    """`beiran config --local` checked the core's settings only: a typo in a plugin's section
    showed first when the restarted daemon ran without that plugin."""
    import subprocess
    import sys

    def check(text: str) -> subprocess.CompletedProcess:
        path = tmp_path / "config.toml"
        path.write_text(text)
        return subprocess.run([sys.executable, "-m", "beiran", "config", "--local", "--config", str(path)],
                              capture_output=True, text=True, timeout=60)
    out = check('[plugins.apt]\ncolour = 1\n[plugins.docker]\nregistires = {}\n'
                '[plugins.npm]\nenabled = false\ncolour = 1\n[plugins.nosuch]\nx = 1\n')
    assert out.returncode == 1 and out.stdout == "", out
    lines = out.stderr.splitlines()
    assert lines[0].startswith("note: [plugins.nosuch]: no such plugin is installed here (installed: apt, "), lines
    assert len(lines) == 2 and "Traceback" not in out.stderr, lines
    assert lines[1].startswith("Error: [plugins.apt]: unknown setting(s) colour (known: "), lines
    assert "; [plugins.docker]: unknown setting(s) registires (known: " in lines[1], lines
    assert "npm" not in lines[1]  # disabled: not checked, as the daemon would not load it
    out = check('[plugins.docker]\nregistries = {}\n')
    assert out.returncode == 0 and "[plugins.docker.registries]" in out.stdout, out
