"""TensorFlow's C++ start-up lines stay off a user's terminal unless asked for with -v."""

import os
import subprocess
import sys

STARTUP = ("oneDNN custom operations", "Could not find cuda drivers", "failed call to cuInit",
           "absl::InitializeLog")


def _python(*args: str) -> subprocess.CompletedProcess:
    """Python in a subprocess, without a TF_CPP_MIN_LOG_LEVEL from the test's environment."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env,
                          timeout=300, stdin=subprocess.DEVNULL)


def _nmt_kd(*args: str) -> subprocess.CompletedProcess:
    return _python("-m", "nmt_kd.cli", *args)


def test_commands_print_only_their_own_lines_and_v_shows_tensorflows(tmp_path):
    quiet = _nmt_kd("translate", "--model", str(tmp_path / "missing"))
    assert quiet.returncode == 2
    assert quiet.stderr.strip().splitlines() == [
        f"nmt-kd: error: {tmp_path / 'missing'}: no model.keras in this model directory"]
    loud = _nmt_kd("-v", "translate", "--model", str(tmp_path / "missing"))
    assert loud.returncode == 2 and "oneDNN custom operations" in loud.stderr
    assert loud.stderr.rstrip().endswith("no model.keras in this model directory")
    assert not any(s in quiet.stderr for s in STARTUP)


RETRACE = """
import sys
from nmt_kd.cli import start_tensorflow
start_tensorflow(verbose=sys.argv[1] == "-v")
import tensorflow as tf
f = tf.function(lambda x: x + 1)
for n in range(1, 9):  # a new input shape each call: TensorFlow warns about retracing
    f(tf.zeros([n]))
print("ok")
"""


def test_tensorflows_python_warnings_are_shown_only_with_v():
    quiet, loud = _python("-c", RETRACE, "-q"), _python("-c", RETRACE, "-v")
    assert quiet.returncode == 0 and quiet.stdout.strip() == "ok"
    assert "retracing" in loud.stderr  # the warning this test is about does appear with -v
    assert "retracing" not in quiet.stderr and "WARNING" not in quiet.stderr
