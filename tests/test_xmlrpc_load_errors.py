"""An XML-RPC module that cannot be imported is reported with the user's frames only.

Real processes: ``porch check`` and the foreground server, whose worker fails to boot and says
why on stderr.  porch's own frames and ``importlib.import_module`` are left out of the
traceback: the user can do nothing with them.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

RAISES = 'import os\n\n\ndef read_settings():\n    return os.environ["RPC_TEST_DB_URL"]\n\n\nURL = read_settings()\n'
SYNTAX_ERROR = "def add(a, b)\n    return a + b\n"
FRAME = re.compile(r'File "([^"]+)", line (\d+)')


def broken_config(tmp_path: Path) -> Path:
    (tmp_path / "rpc_raises.py").write_text(RAISES)
    (tmp_path / "rpc_syntax.py").write_text(SYNTAX_ERROR)
    mounts = [
        {"path": "/a", "type": "xmlrpc", "functions": {"add": "rpc_raises:add"}, "pythonpath": ["."]},
        {"path": "/b", "type": "xmlrpc", "register": "rpc_syntax:register", "pythonpath": ["."]},
    ]
    config = tmp_path / "porch.yaml"
    data = {"listen": ["127.0.0.1:0"], "workers": 1, "log": {"access": False}, "mounts": mounts}
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    return config


def assert_users_frames_only(output: str, tmp_path: Path) -> None:
    """Both modules' failing lines are shown, and no frame of anything but them."""
    frames = FRAME.findall(output)
    assert set(frames) == {
        (str(tmp_path / "rpc_raises.py"), "8"),
        (str(tmp_path / "rpc_raises.py"), "5"),
        (str(tmp_path / "rpc_syntax.py"), "1"),
    }, output
    assert "KeyError: 'RPC_TEST_DB_URL'" in output and "SyntaxError" in output


@pytest.mark.parametrize("command", [["check", "-c"], ["-c"]], ids=["check", "serve"])
def test_a_broken_module_shows_the_users_frames_only(tmp_path: Path, command: list[str]) -> None:
    config = broken_config(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "porch", *command, str(config)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1, result.stderr
    assert "mounts[0].functions.add: cannot load 'rpc_raises:add'" in result.stderr
    assert "mounts[1].register: cannot load 'rpc_syntax:register'" in result.stderr
    assert_users_frames_only(result.stderr, tmp_path)
