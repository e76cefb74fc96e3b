"""A wrong value in the config file, a BEIRAN_* variable or a flag: one line naming the key and
where the value came from, never a traceback from whatever used the value first. In-process: the
loader and the CLI through click's runner."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from beiran.cli.main import cli
from beiran.config import load_config
from beiran.errors import ConfigError

# (file text, the message's end). Each used to pass silently or crash with a traceback.
FILE_CASES = [
    ("listen = 8888", "listen must be a string, not 8888"),
    ("log_level = 5", "log_level must be a string, not 5"),
    ("store = 5", "store must be a table, not 5"),
    ("peers = 5", "peers must be a list of strings, not 5"),
    ('client_cidrs = "10.0.0.0/8"', "client_cidrs must be a list of strings, not '10.0.0.0/8'"),
    ('heartbeat_interval = "fast"', "heartbeat_interval must be a number, not 'fast'"),
    ('[store]\nfsync = "yes"', "store.fsync must be true or false, not 'yes'"),
    ('[fetch]\nmax_parallel_peers = "four"', "fetch.max_parallel_peers must be an integer, not 'four'"),
    ("[fetch]\npeer_timeout = 0", "fetch.peer_timeout must be more than 0, not 0"),
    ("[limits]\npeer_uploads = -1", "limits.peer_uploads must be 0 or more, not -1"),
    ("data_dir = 5", "data_dir must be a path (a string), not 5"),
    ("[origins]\nfiles = 5", "origins must be a table of strings, not {'files': 5}"),
    ("plugins = 5", "plugins must be a table ([plugins.<name>] sections), not 5"),
    ("[plugins]\napt = 5", "[plugins.apt] must be a table, not 5"),
    ('[plugins.dns]\nenabled = "false"', "plugins.dns.enabled must be true or false, not 'false'"),
    ("cluster_token = 5", "cluster_token must be a string, not 5"),
    ("advertise = 5", "advertise must be a string, not 5"),
    ("[store]\nmax_size = true", "store.max_size must be a size such as 512M or 10G (or bytes), not True"),
    ('listen = "127.0.0.1:99999"', "listen: '127.0.0.1:99999' is not HOST:PORT with a port from 1 to 65535"),
    ('listen = "8888"', "listen: '8888' is a port alone: write HOST:PORT (e.g. 127.0.0.1:8888, or :8888 "
                        "for every address)"),
    ('peers = ["ftp://x"]', "peers: peer 'ftp://x': expected http://HOST:PORT"),
    ('[store]\nmax_size = "lots"', "store.max_size: expected a size such as 512M or 10G, got 'lots'"),
    ("[cluster]\nfull_mesh_max = 1", "cluster.full_mesh_max must be an integer of at least 2, not 1"),
    ('[origins]\nfiles = "ftp://x/base"', 'origins.files must be an http:// or https:// URL such as '
                                          '"http://files.example/base", not \'ftp://x/base\''),
    ('[origins]\nfiles = "http://host:99999/x"', 'origins.files must be an http:// or https:// URL such as '
                                                 '"http://files.example/base", not \'http://host:99999/x\''),
]


@pytest.mark.parametrize(("text", "message"), FILE_CASES, ids=[c[0].split("\n")[-1] for c in FILE_CASES])
def test_a_bad_value_in_the_file_names_the_file_and_the_key(tmp_path, text, message):
    cfg = tmp_path / "c.toml"
    cfg.write_text(text + "\n")
    with pytest.raises(ConfigError) as err:
        load_config(cfg, environ={})
    assert err.value.message == f"config file {cfg}: {message}"


def test_a_bad_beiran_variable_names_the_variable(tmp_path):
    cases = {
        "BEIRAN_STORE__FSYNC": ("yes", "store.fsync must be true or false, not 'yes'"),
        "BEIRAN_HEARTBEAT_INTERVAL": ("fast", "heartbeat_interval must be a number, not 'fast'"),
        "BEIRAN_STORE__MAX_SIZE": ("lots", "store.max_size: expected a size such as 512M or 10G, got 'lots'"),
        "BEIRAN_LOG_LEVEL": ("loud", "log_level must be debug, info, warning or error, not 'loud'"),
        "BEIRAN_OFFLINE__QUORUM": ("1", "offline.quorum must be an integer of at least 2"),
        "BEIRAN_LISTEN": ("127.0.0.1:0", "listen: '127.0.0.1:0' is not HOST:PORT"),
        # "no" was a truthy string: the plugin ran
        "BEIRAN_PLUGINS__DNS__ENABLED": ("no", "plugins.dns.enabled must be true or false, not 'no'"),
    }
    for var, (value, message) in cases.items():
        with pytest.raises(ConfigError) as err:
            load_config(environ={var: value})
        assert err.value.message.startswith(f"environment variable {var}: {message}"), err.value.message


def test_beiran_variables_of_string_and_list_settings_are_taken_as_written():
    """BEIRAN_CLUSTER_TOKEN=12345 is a token (TOML would make it a number); list settings take
    commas as BEIRAN_PEERS does."""
    cfg = load_config(environ={"BEIRAN_CLUSTER_TOKEN": "12345", "BEIRAN_CLIENT_CIDRS": "10.0.0.0/8, 127.0.0.0/8",
                               "BEIRAN_ADVERTISE": "10.0.0.5", "BEIRAN_FETCH__PIECE_SIZE": "4M",
                               "BEIRAN_HEARTBEAT_INTERVAL": "1", "BEIRAN_STORE__FSYNC": "false"})
    assert cfg.cluster_token == "12345"
    assert cfg.client_cidrs == ["10.0.0.0/8", "127.0.0.0/8"]
    assert cfg.advertise == "10.0.0.5" and cfg.fetch.piece_size == 4 << 20
    assert cfg.heartbeat_interval == 1 and cfg.store.fsync is False


def test_a_bad_flag_value_names_the_flag(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(environ={}, overrides={"listen": "127.0.0.1:0"})
    assert err.value.message == "--listen: '127.0.0.1:0' is not HOST:PORT with a port from 1 to 65535"
    with pytest.raises(ConfigError) as err:
        load_config(environ={}, overrides={"peers": ["ftp://x"]})
    assert err.value.message == "--peer: peer 'ftp://x': expected http://HOST:PORT"


def test_cli_shows_a_config_error_as_one_line(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[store]\nfsync = "yes"\n')
    env = {"BEIRAN_CONFIG": str(cfg)}
    for args in (["config", "--local"], ["daemon", "--data-dir", str(tmp_path / "d")]):
        out = CliRunner().invoke(cli, args, env=env)
        assert out.exit_code == 1, out.output
        assert out.exception is None or isinstance(out.exception, SystemExit), out.exception
        assert out.output == f"Error: config file {cfg}: store.fsync must be true or false, not 'yes'\n"
    out = CliRunner().invoke(cli, ["daemon", "--listen", "8888"], env={"BEIRAN_CONFIG": str(tmp_path / "none")})
    assert out.exit_code == 1 and out.output.startswith("Error: config file "), out.output


def test_a_plugin_listen_that_is_no_string_is_a_config_error():
    """Plugins check their `listen` with the core's parse_hostport: `listen = 3142` in
    [plugins.apt] was an AttributeError in the plugin's status."""
    from beiran.config import parse_hostport

    with pytest.raises(ConfigError, match=r'3142 is not HOST:PORT: write it as a string, e.g. "127.0.0.1:3142"'):
        parse_hostport(3142, 3142)  # type: ignore[arg-type]  # what a TOML file can hold
