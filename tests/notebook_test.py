"""Executes the notebooks top to bottom, so they cannot rot."""

import pathlib

import nbclient
import nbformat
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize('name', sorted(p.name for p in (ROOT / 'notebooks').glob('*.ipynb')))
def test_notebook_runs(name, monkeypatch):
  monkeypatch.setenv('PYTHONPATH', str(ROOT))
  monkeypatch.delenv('XLA_FLAGS', raising=False)  # One device is what a notebook user has.
  notebook = nbformat.read(ROOT / 'notebooks' / name, as_version=4)
  nbclient.NotebookClient(notebook, timeout=300, kernel_name='python3',
                          resources={'metadata': {'path': str(ROOT)}}).execute()  # Raises on error.
