"""The client talks only to a daemon of its own user; the daemon starts only in places nobody else
could have made or written (attack review, issue 20, items 1 and 2).

Each attack is played by a real other user (testsupport.other_user: a child that setuid's to an
unused uid) and its fake daemon, which records every byte a client sends it.
"""

from __future__ import annotations

import os
import pathlib
import pwd
import shutil
import subprocess
import sys

import pytest
from conftest import DEADLINE, wait_for
from qpu_broker_client import Broker, FailedPreconditionError
from qpu_broker_client.trust import pin_dir, untrusted

from testsupport.fakes import make_ca
from testsupport.other_user import OTHER_UID, Impostor, as_other_user, make_dirs

pytestmark = pytest.mark.skipif(os.getuid() != 0, reason="playing another local user needs root")
SECRET = "ibm-key-canary-7f3a9c"
PASSPHRASE = "passphrase-canary-51d0"


def test_the_other_user_is_nobody():
    with pytest.raises(KeyError):
        pwd.getpwuid(OTHER_UID)


def _env(short_tmp: pathlib.Path, **extra: str) -> dict[str, str]:
    """A user's shell without QPU_BROKER_HOME or XDG_RUNTIME_DIR: platformdirs' defaults, config under a temp HOME."""
    home = short_tmp / "user"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QPU_BROKER_", "XDG_", "LUNA_", "NOTIFY_SOCKET"))}
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"), XDG_DATA_HOME=str(home / ".local/share"),
               XDG_STATE_HOME=str(home / ".local/state"), PYTHONUNBUFFERED="1", **extra)
    return env


def _run(env: dict[str, str], *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "qpu_broker", *args], env=env, input=stdin, capture_output=True,
                          text=True, timeout=DEADLINE, check=False)


def _refused(r: subprocess.CompletedProcess, *needles: str) -> None:
    """Exit 1 with one line on stderr that names what is wrong."""
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    line = r.stderr.strip()
    assert "\n" not in line and "Traceback" not in line, r.stderr
    for needle in needles:
        assert needle in line, line


def _default_socket(env: dict[str, str]) -> pathlib.Path:
    code = "from qpu_broker_client.paths import resolve_paths; print(resolve_paths().socket)"
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return pathlib.Path(r.stdout.strip())


def _tmp_runtime(shared_tmp: pathlib.Path, short_tmp: pathlib.Path, via: str) -> tuple[dict[str, str], pathlib.Path]:
    """The user's env and socket when XDG_RUNTIME_DIR is unset and platformdirs falls back to
    TMPDIR/runtime-UID. `via="platformdirs"`: what the installed platformdirs says (4.11.14 and later
    refuse a runtime-UID another user made); `via="socket"`: the same path given as QPU_BROKER_SOCKET
    (with a home of ours, so platformdirs is not asked), which is what platformdirs before 4.11.14
    returned whoever had made that directory: our own check is what stands there."""
    env = _env(short_tmp, TMPDIR=str(shared_tmp))
    sock = shared_tmp / f"runtime-{os.getuid()}" / "qpu-broker" / "broker.sock"
    if _default_socket(env) != sock:
        pytest.skip("this machine has a /run/user/UID: platformdirs does not fall back to TMPDIR")
    if via == "socket":
        (short_tmp / "home").mkdir(mode=0o700)
        env.update(QPU_BROKER_SOCKET=str(sock), QPU_BROKER_HOME=str(short_tmp / "home"))
    return env, sock


@pytest.mark.parametrize("via", ["platformdirs", "socket"])
def test_a_socket_squatted_in_the_tmp_runtime_dir_gets_nothing(shared_tmp, short_tmp, via):
    env, sock = _tmp_runtime(shared_tmp, short_tmp, via)
    env["QPU_BROKER_NO_AUTOSTART"] = ""  # the user's CLI starts a daemon when none answers: here one does
    runtime = sock.parent.parent
    with Impostor(sock, short_tmp / "received", make_dirs(runtime, sock.parent), needle=SECRET.encode()) as fake:
        _refused(_run(env, "token", "add", "mine", "--provider", "ibm", stdin=SECRET + "\n"),
                 str(runtime), f"owned by uid {OTHER_UID}")
        _refused(_run(env, "daemon"), str(runtime), f"owned by uid {OTHER_UID}")
    assert SECRET.encode() not in fake.received()


@pytest.mark.parametrize("via", ["platformdirs", "socket"])
def test_b_a_tmp_runtime_dir_made_by_another_user_is_refused_by_both_sides(shared_tmp, short_tmp, via):
    env, sock = _tmp_runtime(shared_tmp, short_tmp, via)
    runtime = sock.parent.parent
    as_other_user(make_dirs(runtime))  # only the parent, world-writable: the daemon used to start inside
    _refused(_run(env, "daemon"), str(runtime), f"owned by uid {OTHER_UID}")
    assert not sock.parent.exists()

    # Where an older daemon did start, its directory is moved away later and a socket planted.
    sock.parent.mkdir(mode=0o700)

    def swap() -> None:
        sock.parent.rename(runtime / "moved-away")
        sock.parent.mkdir(mode=0o700)

    with Impostor(sock, short_tmp / "received", swap, needle=SECRET.encode()) as fake:
        _refused(_run(env, "token", "add", "mine", "--provider", "ibm", stdin=SECRET + "\n"),
                 str(runtime), f"owned by uid {OTHER_UID}")
    assert SECRET.encode() not in fake.received()


def test_c_a_home_another_user_made_in_a_shared_sticky_dir_is_refused(shared_tmp, short_tmp):
    home = shared_tmp / "qb-home"
    env = _env(short_tmp, QPU_BROKER_HOME=str(home))
    with Impostor(home / "run" / "broker.sock", short_tmp / "received", make_dirs(home, home / "run", mode=0o755),
                  needle=SECRET.encode()) as fake:
        _refused(_run(env, "token", "add", "mine", "--provider", "ibm", stdin=SECRET + "\n"),
                 f"{home} is owned by uid {OTHER_UID}")
        _refused(_run(env, "daemon"), f"{home} is owned by uid {OTHER_UID}")
    assert SECRET.encode() not in fake.received()


def test_a_socket_that_looks_ours_but_another_user_listens_on_is_refused(shared_tmp, short_tmp):
    """The peer's uid (SO_PEERCRED) catches what file metadata cannot: here root moved and chown'ed
    another user's listening socket into our own directory (a file system whose owners lie looks the same)."""
    theirs = shared_tmp / "theirs"
    ours = short_tmp / "run" / "broker.sock"
    ours.parent.mkdir(mode=0o700)
    with Impostor(theirs / "broker.sock", short_tmp / "received", make_dirs(theirs), needle=PASSPHRASE.encode()) as fake:
        (theirs / "broker.sock").rename(ours)
        os.chown(ours, 0, 0)
        os.chmod(ours, 0o600)
        assert untrusted(ours) is None  # the path alone says nothing is wrong
        with pytest.raises(FailedPreconditionError, match=f"the daemon answering there runs as uid {OTHER_UID}"):
            Broker(ours, autostart=False).unlock(PASSPHRASE)
    assert PASSPHRASE.encode() not in fake.received()


def _plant(home: pathlib.Path, short_tmp: pathlib.Path) -> None:
    """The other user writes a config into `home`: their CA, their IBM token URL."""
    pem = make_ca(short_tmp / "their-ca").ca_file.read_bytes()
    config = ('[providers.ibm]\nhosts = ["iam.attacker.example"]\nca_file = "ca.pem"\n'
              'token_url = "https://iam.attacker.example/identity/token"\n')

    def plant() -> None:
        (home / "ca.pem").write_bytes(pem)
        (home / "config.toml").write_text(config)

    as_other_user(plant)


def test_2_a_world_writable_home_is_refused_never_tightened(shared_tmp, short_tmp):
    home = shared_tmp / "home"
    home.mkdir()
    home.chmod(0o777)
    _plant(home, short_tmp)
    env = _env(short_tmp, QPU_BROKER_HOME=str(home))
    r = _run(env, "daemon")
    _refused(r, str(home), "writable by others (mode 0777)")
    assert "tightened" not in r.stderr + r.stdout
    assert home.stat().st_mode & 0o777 == 0o777, "the daemon changed nothing"
    _refused(_run(env, "token", "add", "mine", "--provider", "ibm", stdin=SECRET + "\n", ), str(home),
             "writable by others (mode 0777)")

    # Made private afterwards, the home still holds what the other user wrote: refused by name.
    home.chmod(0o700)
    _refused(_run(env, "daemon"), str(home / "config.toml"), f"owned by uid {OTHER_UID}")


def test_2_a_ca_file_another_user_could_write_is_refused(shared_tmp, short_tmp):
    theirs = shared_tmp / "shared-certs"
    as_other_user(make_dirs(theirs))
    home = short_tmp / "home"
    home.mkdir(mode=0o700)
    shutil.copy(make_ca(short_tmp / "ca").ca_file, theirs / "ca.pem")  # root's file, in their directory
    (home / "config.toml").write_text(f'[providers.ibm]\nca_file = "{theirs / "ca.pem"}"\n')
    _refused(_run(_env(short_tmp, QPU_BROKER_HOME=str(home)), "daemon"), "providers.ibm.ca_file",
             f"{theirs} is owned by uid {OTHER_UID}")


def test_legitimate_layouts_keep_working(shared_tmp, short_tmp):
    """systemd's XDG_RUNTIME_DIR (the user's own 0700 dir), the TMPDIR fallback nobody squatted,
    and a symlinked config of ours all serve."""
    runtime = short_tmp / "xdg-runtime"
    runtime.mkdir(mode=0o700)
    dotfiles = short_tmp / "dotfiles"
    dotfiles.mkdir()
    (dotfiles / "qpu-broker.toml").write_text("[limits]\nname_max_chars = 64\n")
    for env in (_env(short_tmp, XDG_RUNTIME_DIR=str(runtime)), _env(short_tmp, TMPDIR=str(shared_tmp))):
        config = pathlib.Path(env["XDG_CONFIG_HOME"]) / "qpu-broker" / "config.toml"
        if not config.parent.exists():
            config.parent.mkdir(parents=True, mode=0o700)
            config.symlink_to(dotfiles / "qpu-broker.toml")
        env["QPU_BROKER_NO_AUTOSTART"] = ""
        r = _run(env, "token", "list", "--json")
        assert r.returncode == 0, r.stderr
        sock = _default_socket(env)
        assert sock.exists()
        assert _run(env, "stop").returncode == 0
        wait_for(lambda s=sock: not s.exists(), "the daemon to stop")  # the next one shares its store


# -- the check itself, in-process ------------------------------------------------------------------

def _chown_other(*paths: pathlib.Path) -> None:
    for p in paths:
        os.lchown(p, OTHER_UID, OTHER_UID)


def _verdict(path: str | os.PathLike[str]) -> str | None:
    """untrusted()'s answer, which the walk by descriptor (pin_dir) must give too."""
    by_name = untrusted(path)
    try:
        held = pin_dir(path, "the path", "fix it", leaf=True)
    except FailedPreconditionError as exc:
        assert str(exc) == f"refusing the path {path}: {by_name}; fix it"
    else:
        assert by_name is None
        if held is not None:
            held[0].close()
    return by_name


def test_untrusted_names_the_first_entry_another_user_could_change(short_tmp):
    base = short_tmp / "t"
    (base / "mine" / "deep").mkdir(parents=True)
    (base / "theirs").mkdir()
    _chown_other(base / "theirs")
    assert _verdict(base / "mine" / "deep" / "not-yet" / "there") is None  # what exists is ours
    assert _verdict("/tmp") is None  # root's and sticky
    assert _verdict(base / "theirs" / "x") == f"{base / 'theirs'} is owned by uid {OTHER_UID}, not by you (uid 0) or root"
    (base / "mine").chmod(0o775)
    assert _verdict(base / "mine" / "deep") == f"{base / 'mine'} is writable by its group (mode 0775)"
    (base / "mine").chmod(0o1777)  # sticky: others cannot move what is ours
    assert _verdict(base / "mine" / "deep") is None
    (base / "mine").chmod(0o755)
    (base / "mine" / "f").write_text("")
    (base / "mine" / "f").chmod(0o646)
    assert _verdict(base / "mine" / "f") == f"{base / 'mine' / 'f'} is writable by others (mode 0646)"
    (base / "mine" / "f").chmod(0o644)
    assert _verdict(base / "mine" / "f") is None
    assert _verdict(base / "mine" / "f" / "x") == f"{base / 'mine' / 'f'} is not a directory"


def test_untrusted_follows_symlinks_as_the_kernel_does(short_tmp):
    base = short_tmp / "s"
    (base / "mine").mkdir(parents=True)
    (base / "theirs").mkdir()
    (base / "theirs" / "dir").mkdir()
    _chown_other(base / "theirs")
    # A link of ours to their directory: the target's path counts.
    (base / "to-theirs").symlink_to("theirs/dir")
    assert _verdict(base / "to-theirs" / "x") == f"{base / 'theirs'} is owned by uid {OTHER_UID}, not by you (uid 0) or root"
    # Their link, in a directory of ours, to a directory of ours: the link itself is theirs.
    (base / "their-link").symlink_to(base / "mine")
    _chown_other(base / "their-link")
    assert "their-link is owned by uid" in _verdict(base / "their-link" / "x")
    # Relative links with .. resolve from where the link sits, through a chain of links.
    (base / "mine" / "up").symlink_to("../mine/..")
    (base / "hop").symlink_to("mine/up/theirs")
    assert f"{base / 'theirs'} is owned" in _verdict(base / "hop" / "dir")
    assert _verdict(base / "mine" / "up" / "mine") is None
    assert f"{base / 'theirs'} is owned" in _verdict(f"{base}/to-theirs/../x")  # .. of the link's target, not of the link
    (base / "loop").symlink_to("loop")
    assert "more than 40 symlinks" in _verdict(base / "loop")
