"""What every command line of the project does the same way: exit statuses and errors.

A finished run, a bad command, a diverged model and a preempted job each have their own exit
status (EXIT_*, for schedulers; docs/clusters.md). User errors print one sentence on stderr;
SEQPE_TRACEBACK=1 shows their traceback.
"""

import contextlib
import json
import logging as std_logging
import os
import pathlib
import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

EXIT_BAD_INPUT = 2  # The message says what to change (also: a missing optional package).
EXIT_NONFINITE = 3  # The message names the step and the newest finite checkpoint.
EXIT_INTERRUPTED = 130  # What a shell reports for a process ended by SIGINT.
EXIT_PREEMPTED = 143  # What a shell reports for a process ended by SIGTERM.


class Preempted(RuntimeError):
  """SIGTERM stopped a run after every process saved the same checkpoint."""


class Interrupted(RuntimeError):
  """Ctrl-C stopped a run after every process saved the same checkpoint."""


# The exit status of each kind of error, the first that matches; OSError covers missing files,
# ImportError an optional package a feature needs.
_STATUSES = ((Preempted, EXIT_PREEMPTED), (Interrupted, EXIT_INTERRUPTED),
             (FloatingPointError, EXIT_NONFINITE),
             ((ValueError, OSError, ImportError, app.UsageError), EXIT_BAD_INPUT))


def _show_tracebacks() -> bool:
  return os.environ.get('SEQPE_TRACEBACK', '') not in ('', '0')


@contextlib.contextmanager
def exit_statuses():
  """Maps the project's errors to one sentence on stderr and the documented exit status."""
  try:
    yield
  except KeyboardInterrupt:
    if _show_tracebacks():
      raise
    print('error: interrupted by Ctrl-C; what was saved is kept, and the same command '
          'resumes from the newest checkpoint.', file=sys.stderr)
    sys.exit(EXIT_INTERRUPTED)
  except Exception as e:  # pylint: disable=broad-except
    status = next((status for kinds, status in _STATUSES if isinstance(e, kinds)), None)
    if status is None or _show_tracebacks():
      raise
    print(f'error: {e}', file=sys.stderr)
    sys.exit(status)


def prepare_process(dtype: str = 'float32') -> None:
  """What every entry point does before JAX starts a backend: quiet logs, XLA:CPU tuned for
  the process's precision (its run's `model.dtype`; float32 for several runs)."""
  quiet_library_logs()
  # bfloat16 keeps YNNPACK: XLA:CPU's own emitter fails on a bfloat16 product contracting
  # several dimensions ("UNIMPLEMENTED: Dot with multiple contracting dimensions").
  if dtype == 'float32':
    without_ynn_fusions()


# The XLA flag naming the matrix-product fusions XLA:CPU hands to YNNPACK; empty: none.
YNN_FUSIONS_FLAG = 'xla_cpu_experimental_ynn_fusion_type'


def without_ynn_fusions() -> None:
  """Turns off XLA:CPU's YNNPACK fusions (Eigen's kernels run instead; results differ in
  rounding only) unless XLA_FLAGS sets them; must run before JAX's first computation. Their
  scratch is faulted in afresh on every call (docs/benchmarks.md: memory and time)."""
  flags_now = os.environ.get('XLA_FLAGS', '')
  if YNN_FUSIONS_FLAG not in flags_now:
    os.environ['XLA_FLAGS'] = f'{flags_now} --{YNN_FUSIONS_FLAG}='.strip()


def run_dtype(workdir: str) -> str:
  """`model.dtype` of the run in `workdir` (float32 without a record), for `prepare_process`."""
  from etils import epath  # pylint: disable=g-import-not-at-top
  path = epath.Path(workdir) / 'config.json'
  with contextlib.suppress(OSError, ValueError):
    return json.loads(path.read_text()).get('model', {}).get('dtype', 'float32')
  return 'float32'  # The evaluation itself says what is wrong with the run.


# Libraries whose warnings advise their developers, not a run's user: orbax's on save timing
# (every save of a small run), gcsfs's on each failed bucket probe (the run's error says why).
QUIET_LIBRARIES = ('/orbax/', '/gcsfs/')


def quiet_library_logs() -> None:
  """Library INFO logs and QUIET_LIBRARIES' warnings off, unless --verbosity is given."""
  if flags.FLAGS['verbosity'].present:
    return
  logging.set_verbosity(logging.WARNING)
  logging.get_absl_handler().addFilter(
      lambda record: record.levelno >= std_logging.ERROR or not any(
          library in record.pathname for library in QUIET_LIBRARIES))


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing with the config loaded at once, so a bad config file, variant,
  override key or value is one sentence and status 2 before anything else runs."""
  try:
    remaining = flags.FLAGS([_installed_config(arg) for arg in argv])
    if 'config' in flags.FLAGS:
      path = config_flags.get_config_filename(flags.FLAGS['config']).split(':', 1)[0]
      if not pathlib.Path(path).is_file():
        raise FileNotFoundError(f'the config file {path} does not exist (the configs are in '
                                'configs/, e.g. --config=configs/vit_seqpe.py:smoke).')
      flags.FLAGS.config.to_dict()  # Touches every field, so deferred errors surface now.
  except Exception as e:  # pylint: disable=broad-except
    if _show_tracebacks():
      raise
    print(f'error: {_config_error(e, argv)}', file=sys.stderr)
    sys.exit(EXIT_BAD_INPUT)
  return remaining


def _installed_config(arg: str) -> str:
  """--config=configs/x.py from outside the checkout: the configs installed beside the package."""
  if not arg.startswith('--config='):
    return arg
  path, colon, variant = arg[len('--config='):].partition(':')
  beside_package = pathlib.Path(__file__).resolve().parents[1] / path
  if pathlib.Path(path).exists() or not beside_package.is_file():  # Absolute: joins to itself.
    return arg
  return f'--config={beside_package}{colon}{variant}'


def error_chain(error: BaseException):
  """The error, then the one it was raised from or while handling, and so on."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    yield error
    error = error.__cause__ or error.__context__


def _config_error(error: Exception, argv: list[str]) -> str:
  """The innermost message of a flag-parsing error, naming the override at fault."""
  if isinstance(error, FileNotFoundError):
    return str(error)
  chain = list(error_chain(error))
  if any(isinstance(e, (KeyError, AttributeError)) for e in chain):
    text = ' '.join(str(e) for e in chain)
    guess = re.search(r'Did you mean .{0,2}"(\w+)" instead of .{0,2}"(\w+)"', text)
    key = guess.group(2) if guess else str(chain[-1]).strip('\'"')
    override = next((a.split('=', 1)[0] for a in argv[1:]
                     if f'.{key}.' in a.split('=', 1)[0] + '.'), f'--{key}')
    hint = '.'
    if guess:
      fixed = (override + '.').replace(f'.{key}.', f'.{guess.group(1)}.', 1)[:-1]
      hint = f'; did you mean {fixed}?'
    return f'{override} is not a field of the config{hint}'
  first_line = str(error).splitlines()[0] if str(error) else ''
  if first_line.startswith('flag --') and 'Traceback' not in str(error):
    return first_line  # absl names the flag and its bad value: "flag --x=abc: could not ..."
  lines = [line.strip() for line in str(chain[-1]).splitlines() if line.strip()]
  return lines[-1] if lines else type(chain[-1]).__name__
