"""The on-disk cache of built corpora, trained tokenizers and token arrays."""

import os
import pathlib
import uuid


def root(configured: str = '') -> pathlib.Path:
  """`configured`, else $SEQPE_CACHE_DIR, else ~/.cache/seqpe_jax."""
  return pathlib.Path(configured or os.environ.get('SEQPE_CACHE_DIR') or
                      '~/.cache/seqpe_jax').expanduser()


def atomic_write(path: pathlib.Path, data: str | bytes) -> None:
  """Writes via a temporary file, so concurrent builders (test workers, hosts sharing a
  disk) never see a partial file; the last writer wins with identical content."""
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f'{path.name}.{uuid.uuid4().hex}.tmp')
  tmp.write_bytes(data.encode('utf-8') if isinstance(data, str) else data)
  tmp.replace(path)
