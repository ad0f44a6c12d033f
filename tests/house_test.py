"""The shape of the house: the library never imports the lab, the trainer knows tasks (not
PEs, not the evaluator), the models know PEs only through their hooks, and no two modules
of the package import each other."""

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


# What a model may know of position encodings: the hooks it calls (posenc.inject) and, from
# the posenc package, what a PE is (PositionalEncoding) and what it is told of its host
# (HostSpec). Every PE loss lives in posenc and reads what the models return.
HOOK_INTERFACE = {'seqpe_jax.posenc': {'PositionalEncoding', 'HostSpec', 'inject'},
                  'seqpe_jax.posenc.inject': None}


def posenc_uses(path: pathlib.Path) -> set[str]:
  """What `path` takes from posenc: modules imported from it, and `posenc.X` attributes."""
  tree = ast.parse(path.read_text())
  used = {m for m in imported_modules(path) if m.startswith('seqpe_jax.posenc')}
  aliases = {alias.asname or alias.name for node in ast.walk(tree)
             if isinstance(node, ast.ImportFrom) and node.module == 'seqpe_jax'
             for alias in node.names if alias.name == 'posenc'}
  used |= {f'seqpe_jax.posenc.{node.attr}' for node in ast.walk(tree)
           if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
           and node.value.id in aliases}
  return used


def beyond_hook_interface(used: set[str]) -> set[str]:
  allowed = {f'{module}.{name}' for module, names in HOOK_INTERFACE.items() for name in names or ()}
  return {name for name in used if name not in HOOK_INTERFACE and name not in allowed}


def test_the_models_know_position_encodings_only_through_the_hook_interface():
  found = {name: sorted(beyond_hook_interface(posenc_uses(path)))
           for name, path in MODULES.items() if name.startswith('seqpe_jax.models')}
  assert not {name: used for name, used in found.items() if used}


def test_the_hook_interface_check_sees_a_loss_imported_into_a_model(tmp_path):
  for source in ('from seqpe_jax.posenc import inject, losses\n',
                 'from seqpe_jax import posenc\nx = posenc.regularizers.build\n'):
    model = tmp_path / 'model.py'
    model.write_text(source)
    assert beyond_hook_interface(posenc_uses(model)), source
  model.write_text('from seqpe_jax import posenc\nx = posenc.HostSpec, posenc.inject.LayerHook\n')
  assert not beyond_hook_interface(posenc_uses(model))


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
