"""The shape of the house: the library never imports the lab, the trainer knows tasks (not
PEs, not the evaluator), and no two modules of the package import each other."""

import ast
import pathlib

import pytest

from seqpe_jax.tasks import base

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / 'seqpe_jax'


def module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix('').parts
  return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def imported_modules(path: pathlib.Path, root: str = 'seqpe_jax') -> set[str]:
  """The `root` modules `path` imports anywhere in the file (function-level too)."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      found |= {alias.name for alias in node.names}
    elif isinstance(node, ast.ImportFrom) and node.module:
      found.add(node.module)
      found |= {f'{node.module}.{alias.name}' for alias in node.names}
  return {name for name in found if name == root or name.startswith(f'{root}.')}


MODULES = {module_name(p): p for p in PACKAGE.rglob('*.py')}
# `from seqpe_jax.posenc import inject` inside posenc/ names its own package, whose
# __init__ imports its submodules: the usual package layout, not a cycle.
GRAPH = {name: {m for m in imported_modules(path)
                if m in MODULES and m != name and not name.startswith(f'{m}.')}
         for name, path in MODULES.items()}


def test_the_library_never_imports_the_lab():
  importers = {name: sorted(imported_modules(path, 'lab')) for name, path in MODULES.items()}
  assert not {name: found for name, found in importers.items() if found}


def test_the_trainer_imports_neither_the_evaluator_nor_a_position_encoding():
  imports = GRAPH['seqpe_jax.train']
  assert 'seqpe_jax.evaluate' not in imports
  assert not [m for m in imports if m.startswith('seqpe_jax.posenc')], imports


def test_no_import_cycles():
  def reaches(start, target, seen):
    for nxt in GRAPH[start]:
      if nxt == target or (nxt not in seen and (seen.add(nxt) or reaches(nxt, target, seen))):
        return True
    return False
  cycles = [name for name in GRAPH if reaches(name, name, set())]
  assert not cycles, cycles


@pytest.mark.parametrize('task_class', ['classification.ClassificationTask',
                                        'lm.LanguageModelTask', 'qa.QATask'])
def test_every_task_declares_the_contract(task_class):
  from seqpe_jax import tasks  # pylint: disable=g-import-not-at-top
  module, name = task_class.split('.')
  cls = getattr(getattr(tasks, module), name)
  assert base.Task in cls.__mro__ and not cls.__abstractmethods__
  assert isinstance(cls.metric, str) and isinstance(cls.axis_label, str)


def test_a_task_missing_a_required_method_cannot_be_built():
  class Incomplete(base.Task):
    metric, axis_label = 'ppl', 'tokens'
  with pytest.raises(TypeError, match='abstract'):
    Incomplete()
