"""One message for a config value outside its choices, with a did-you-mean as for keys."""

import difflib
from collections.abc import Iterable


def unknown(field: str, value, choices: Iterable) -> ValueError:
  """ValueError("pe.name='rop' is not one of: ape, rope, ...; did you mean 'rope'?")."""
  names = [str(c) for c in choices]
  close = difflib.get_close_matches(str(value), names, n=1, cutoff=0.6)
  hint = f"; did you mean '{close[0]}'?" if close else '.'
  return ValueError(f"{field}={value!r} is not one of: {', '.join(names)}{hint}")
