"""ssh remotes end to end: a real sshd on 127.0.0.1 with key authentication.

The mount, and git inside it (lazy fetches through the daemon, ``push``
straight to the origin), reach the repository through ``ssh`` as git would:
``GIT_SSH_COMMAND`` or the user's ``core.sshCommand``, protocol v2 passed in
the environment or, when sshd does not accept the variable, in the command.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from artifactfs.remote import RemoteURL, open_remote
from artifactfs.remote.ssh import MessageFramer, resolve_ssh_command, upload_pack_command
from artifactfs.remote.url import SshTarget
from artifactfs.testing import FileSpec
from artifactfs.testing.sshserver import SshServer
from artifactfs.testing.waiting import wait_until

FILES: dict[str, bytes | FileSpec] = {
    "README.md": b"# over ssh\n",
    "src/app.py": b"print('ssh')\n",
    "data/blob.bin": bytes(range(256)) * 1000,
    "bin/tool": FileSpec(b"#!/bin/sh\necho tool\n", executable=True),
}


@pytest.fixture
def sshd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SshServer]:
    """A running sshd; ``GIT_SSH_COMMAND`` points the daemon and git in the mount at it."""
    with SshServer(tmp_path / "sshd") as server:
        monkeypatch.setenv("GIT_SSH_COMMAND", server.ssh_command)
        yield server


def served_head(repo: Path, branch: str = "main") -> str:
    return subprocess.run(
        ["git", "--git-dir", str(repo), "rev-parse", branch], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_mount_read_commit_and_push_over_ssh_url(make_repo, sshd, mounts) -> None:
    repo, tip = make_repo("project", FILES, extra_commits=2)
    tree = mounts(sshd.url(repo))
    for name, spec in FILES.items():
        content = spec.data if isinstance(spec, FileSpec) else spec
        assert (tree.path / name).read_bytes() == content
    assert (tree.path / "bin/tool").stat().st_mode & 0o111
    assert tree.git("config", "remote.origin.url").stdout.strip() == sshd.url(repo)
    assert tree.git("rev-parse", "HEAD").stdout.strip() == tip
    # History arrives over ssh too (git log needs it).
    tree.wait_for(lambda status: status["history_complete"], timeout=30)
    assert len(tree.git("log", "--format=%H").stdout.split()) == 3

    (tree.path / "src/app.py").write_text("print('changed over ssh')\n")
    (tree.path / "new.txt").write_text("new\n")
    tree.git("add", "-A")
    tree.git("-c", "user.name=Dev", "-c", "user.email=dev@example.com", "commit", "-qm", "over ssh")
    commit = tree.git("rev-parse", "HEAD").stdout.strip()
    tree.git("push", "-q", "origin", "main")
    assert served_head(repo) == commit
    shown = subprocess.run(
        ["git", "--git-dir", str(repo), "show", "main:src/app.py"], capture_output=True, check=True
    ).stdout
    assert shown == b"print('changed over ssh')\n"


def test_scp_like_remote_with_core_ssh_command_and_no_accept_env(
    make_repo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mounts
) -> None:
    """``host:path`` through the client config's alias; ssh chosen by the user's core.sshCommand;
    an sshd that drops GIT_PROTOCOL, so v2 is asked for in the remote command (the mount speaks
    nothing else, so mounting at all shows it)."""
    repo, _ = make_repo("scp", FILES)
    with SshServer(tmp_path / "sshd-plain", accept_protocol_env=False) as server:
        user_config = tmp_path / "gitconfig"
        user_config.write_text(f"[core]\n\tsshCommand = {server.ssh_command}\n")
        monkeypatch.delenv("GIT_SSH_COMMAND", raising=False)
        monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(user_config))
        url = server.scp_url(repo)
        tree = mounts(url)
        try:
            assert (tree.path / "data/blob.bin").read_bytes() == FILES["data/blob.bin"]
            assert tree.git("config", "remote.origin.url").stdout.strip() == url
            # git's own fetch from the origin in the mount uses the same ssh.
            assert tree.git("ls-remote", "origin", "main").stdout.split()[0] == served_head(repo)
        finally:
            tree.unmount()


def test_key_from_ssh_agent(make_repo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mounts) -> None:
    """The key lives only in ssh-agent (the daemon inherits SSH_AUTH_SOCK), not in any file ssh reads."""
    repo, _ = make_repo("agent", FILES)
    socket_path = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(socket_path)], stdout=subprocess.DEVNULL)
    try:
        wait_until(socket_path.exists, "ssh-agent did not start", timeout=10)
        with SshServer(tmp_path / "sshd-agent", key_in_config=False) as server:
            agent_env = {**os.environ, "SSH_AUTH_SOCK": str(socket_path)}
            subprocess.run(["ssh-add", "-q", str(server.client_key)], env=agent_env, check=True)
            server.client_key.unlink()
            monkeypatch.setenv("SSH_AUTH_SOCK", str(socket_path))
            monkeypatch.setenv("GIT_SSH_COMMAND", server.ssh_command)
            tree = mounts(server.url(repo), name="agent")
            try:
                assert (tree.path / "README.md").read_bytes() == FILES["README.md"]
            finally:
                tree.unmount()
    finally:
        agent.terminate()
        agent.wait()


def test_unreachable_and_unauthorised_ssh_remotes_fail_in_one_line(
    make_repo, sshd, tmp_path: Path, mounts
) -> None:
    repo, _ = make_repo("denied", FILES)
    (sshd.directory / "authorized_keys").write_text("")
    with pytest.raises(AssertionError, match="ssh authentication failed"):
        mounts(sshd.url(repo), name="denied")
    assert list((tmp_path / "denied").iterdir()) == []


def test_ssh_command_resolution_follows_git() -> None:
    target = SshTarget("example.com", "/srv/r.git", "git", 2222)
    shell = resolve_ssh_command({"GIT_SSH_COMMAND": "ssh -i key"}, {"core.sshcommand": "other"})
    assert shell.words == ["sh", "-c", 'ssh -i key "$@"', "ssh -i key"]
    assert shell.argv(target, "cmd")[4:] == [
        "-o",
        "SendEnv=GIT_PROTOCOL",
        "-o",
        "BatchMode=yes",
        "-p",
        "2222",
        "git@example.com",
        "cmd",
    ]
    configured = resolve_ssh_command({}, {"core.sshcommand": "/opt/bin/plink -v"})
    assert configured.variant == "plink"
    assert configured.argv(target, "cmd")[-4:] == ["-P", "2222", "git@example.com", "cmd"]
    wrapper = resolve_ssh_command({"GIT_SSH": "/usr/local/bin/my-ssh"}, {})
    assert wrapper.words == ["/usr/local/bin/my-ssh"] and wrapper.variant == "simple"
    with pytest.raises(Exception, match="port"):
        wrapper.argv(target, "cmd")
    assert resolve_ssh_command({"GIT_SSH": "x"}, {"ssh.variant": "ssh"}).variant == "ssh"
    assert resolve_ssh_command({}, {}).words == ["ssh"]


def test_remote_command_quoting() -> None:
    assert upload_pack_command("/srv/it's!.git", protocol_in_command=False) == (
        "git-upload-pack '/srv/it'\\''s'\\!'.git'"
    )
    assert upload_pack_command("r", protocol_in_command=True) == "GIT_PROTOCOL=version=2 git-upload-pack 'r'"


def test_message_framer_finds_the_closing_flush_across_chunks() -> None:
    message = b"000eversion 2\n" + b"0001" + b"0009abcde" + b"0000"
    following = b"0008next"
    data = message + following
    for split in range(len(data) + 1):
        framer = MessageFramer()
        first = framer.end(data[:split])
        if first is not None:
            assert first == len(message)
            continue
        second = framer.end(data[split:])
        assert second is not None and split + second == len(message)
    with pytest.raises(Exception, match="malformed"):
        MessageFramer().end(b"zzzz")


def test_finished_connections_are_reused(make_repo, sshd) -> None:
    """A v2 answer over ssh ends at its flush: the next command goes on the same connection."""
    repo, tip = make_repo("pooled", FILES)

    async def session_work() -> list[str]:
        async with await open_remote(RemoteURL.parse(sshd.url(repo))) as session:
            heads = [(await session.ls_refs(["HEAD"]))[0].oid for _ in range(4)]
            async with session.fetch([tip], filter_spec="blob:none", depth=1) as response:
                assert sum([len(chunk) async for chunk in response.pack_chunks()]) > 0
            heads.append((await session.ls_refs(["HEAD"]))[0].oid)
            return heads

    assert trio.run(session_work) == [tip] * 5
    assert sshd.log_path.read_text().count("Accepted publickey") == 1
