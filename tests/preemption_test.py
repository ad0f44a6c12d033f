"""The stop signals of one process: SIGTERM and a first Ctrl-C ask for a save after the
step; a second Ctrl-C exits at once with status 130."""

import os
import pathlib
import signal
import subprocess
import sys

from seqpe_jax import cli
from seqpe_jax.preemption import PreemptionWatch

TWO_CTRL_C = '''
import os, signal, time
from seqpe_jax.preemption import PreemptionWatch
watch = PreemptionWatch()
os.kill(os.getpid(), signal.SIGINT)
print('first', watch.reached(1), watch.signal_name, flush=True)
os.kill(os.getpid(), signal.SIGINT)
time.sleep(30)
print('not reached', flush=True)
'''


def test_a_second_ctrl_c_exits_at_once_with_130():
  result = subprocess.run([sys.executable, '-c', TWO_CTRL_C], capture_output=True, text=True,
                          cwd=pathlib.Path(__file__).resolve().parents[1], timeout=120)
  assert result.returncode == cli.EXIT_INTERRUPTED
  assert result.stdout.split() == ['first', 'True', 'SIGINT']
  assert result.stderr.splitlines()[-1] == 'Second Ctrl-C: stopped at once, without saving.'


def test_sigterm_asks_for_a_save_and_close_puts_the_handlers_back():
  before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
  watch = PreemptionWatch()
  assert not watch.reached(1)
  os.kill(os.getpid(), signal.SIGTERM)
  assert watch.reached(2) and not watch.interrupted and watch.signal_name == 'SIGTERM'
  watch.close()
  watch.close()  # Twice: nothing more.
  assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
