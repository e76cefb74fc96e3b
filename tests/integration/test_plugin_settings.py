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
