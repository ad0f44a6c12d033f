"""MediaWiki dump -> WikiText-raw layout, with our own markup cleaner (standard library only).

The embedded LM corpus is the shortened English Wikipedia dump that ships in the gensim
wheel. Its pages get ` = Title = ` / ` = = Section = = ` headings and one paragraph per
line, the layout of WikiText-103's `wiki.*.raw`, so the embedded corpus and the real one
share one loader; WikiText's punctuation spacing (` @-@ `) is not imitated (unneeded).
"""

import bz2
import html
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator

# Link prefixes whose whole link disappears (media, categories, other-language wikis).
_DROP_LINK = re.compile(r'^\s*:?\s*(file|image|category|media|[a-z]{2,3}(-[a-z]+)?|simple|wikt'
                        r'|wiktionary|s|q|commons|meta)\s*:', re.IGNORECASE)
_COMMENT = re.compile(r'<!--.*?-->', re.DOTALL)
_REF = re.compile(r'<ref[^>/]*/>|<ref[^>]*>.*?</ref>', re.DOTALL | re.IGNORECASE)
# Tags whose content is not prose.
_DROP_BLOCK = re.compile(r'<(math|gallery|timeline|score|syntaxhighlight|source|imagemap|chem)'
                         r'\b[^>]*>.*?</\1>', re.DOTALL | re.IGNORECASE)
_TAG = re.compile(r'</?[a-zA-Z][^>]*>')
_TEMPLATE = re.compile(r'\{\{[^{}]*\}\}')  # Innermost template; applied until none is left.
_TABLE = re.compile(r'\{\|(?:(?!\{\|).)*?\|\}', re.DOTALL)  # Innermost table.
_LINK = re.compile(r'\[\[([^\[\]]*)\]\]')  # Innermost internal link.
_EXTERNAL = re.compile(r'\[(?:https?:)?//[^\s\]]+\s*([^\]]*)\]')
_EMPHASIS = re.compile(r"'{2,5}")
_HEADING = re.compile(r'^(={1,6})\s*(.*?)\s*\1\s*$')
_MAGIC = re.compile(r'__[A-Z]+__')
_SPACES = re.compile(r'[ \t\u00a0]+')


def _until_stable(pattern: re.Pattern, repl, text: str) -> str:
  """Applies an innermost-match substitution until nothing changes (handles nesting)."""
  while True:
    text, n = pattern.subn(repl, text)
    if not n:
      return text


def _link(match: re.Match) -> str:
  inner = match.group(1)
  return '' if _DROP_LINK.match(inner) else inner.split('|')[-1]  # The label of [[target|label]].


def clean_markup(text: str) -> str:
  """MediaWiki source -> plain text, keeping `==` headings and line structure."""
  for pattern in (_COMMENT, _REF, _DROP_BLOCK):
    text = pattern.sub('', text)
  for pattern, repl in ((_TEMPLATE, ''), (_TABLE, ''), (_LINK, _link)):
    text = _until_stable(pattern, repl, text)
  text = _EXTERNAL.sub(r'\1', text)
  for pattern in (_TAG, _EMPHASIS, _MAGIC):
    text = pattern.sub('', text)
  return html.unescape(text)


def to_wikitext_lines(title: str, markup: str) -> list[str]:
  """One article in the WikiText-raw layout: title, headings, one paragraph per line."""
  lines = [f' = {title} = ', '']
  for raw in clean_markup(markup).split('\n'):
    line = _SPACES.sub(' ', raw).strip()
    if heading := _HEADING.match(line):
      marks, name = ' '.join('=' * max(len(heading.group(1)), 2)), heading.group(2).strip()
      if name:
        lines += [f' {marks} {name} {marks} ', '']
      continue
    line = line.lstrip('*#:;=').strip()  # List/indent markers; stray '=' of formulas.
    if len(line.split()) < 3 or line.startswith(('|', '!', '{', '}')):
      continue  # List stubs, leftover table rows and templates are not prose.
    lines += [f' {line} ', '']
  # Drop headings of sections left empty (e.g. "References" after its list was removed).
  kept = []
  for line in lines:
    if line.startswith(' = = ') and len(kept) >= 2 and kept[-2].startswith(' = = '):
      kept = kept[:-2]
    kept.append(line)
  while len(kept) >= 2 and kept[-2].startswith(' = = '):
    kept = kept[:-2]
  return kept


def iter_articles(dump_bz2: str) -> Iterator[tuple[str, str]]:
  """(title, markup) of every main-namespace, non-redirect page of a bz2 MediaWiki dump."""
  with bz2.open(dump_bz2, 'rb') as f:
    for _, elem in ET.iterparse(f, events=('end',)):
      if not elem.tag.endswith('}page'):
        continue
      ns = '{' + elem.tag[1:].split('}')[0] + '}'
      title = elem.findtext(f'{ns}title') or ''
      namespace = elem.findtext(f'{ns}ns') or '0'
      text = elem.findtext(f'{ns}revision/{ns}text') or ''
      redirect = elem.find(f'{ns}redirect') is not None or text.lstrip().upper().startswith(
          '#REDIRECT')
      elem.clear()
      if namespace == '0' and not redirect and text:
        yield title, text


def article_words(lines: list[str]) -> int:
  """Words of prose (headings excluded)."""
  return sum(len(line.split()) for line in lines if line and not line.startswith(' = '))
