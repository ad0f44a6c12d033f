"""The reference sampler's digit edits of hard negatives, jittable, quirks included
(pe.contrastive.hard_negative_rules = 'reference'; docs/method.md §5.2). One more quirk: an
insert into "0" may write "0d", the one way a leading zero arises.

A string is int32[..., S] digits, left-aligned, zeros beyond its length. The reference
retries an edit until it is accepted; here the first accepted of ATTEMPTS independent
attempts is kept, distributed alike, and all fail (the caller falls back to another chain)
about as rarely as a 1e-9 event.
"""

import jax
import jax.numpy as jnp

from seqpe_jax import rng

ATTEMPTS = 32  # Attempts per edit (the reference retries without bound).
SWAP_DRAWS = 11  # A swap draws its pair once and redraws up to 10 times, then gives up.
INSERT, DELETE, SWAP, REPLACE = range(4)


def edit_chain(key: jax.Array, string: jax.Array, length: jax.Array, *, base: int,
               max_digits: int, limit: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """1-3 accepted edits of each pivot numeral `string` [..., S] of `length` [...] (inserts stop
  at exactly `max_digits` = k, numbers stay below `limit` = P^n): the edited strings, their
  lengths and whether every edit was accepted."""
  count_key, edit_key = jax.random.split(key)
  num_edits = rng.randint(count_key, length.shape, 1, 4)
  step_keys = jax.random.split(edit_key, 3)

  def step(i, carry):  # A loop, not unrolled: the edit compiles once.
    current, current_length, ok = carry
    new, new_length, accepted = _edit(step_keys[i], current, current_length, string, length,
                                      base=base, max_digits=max_digits, limit=limit)
    apply = i < num_edits
    return (jnp.where(apply[..., None], new, current),
            jnp.where(apply, new_length, current_length), ok & (~apply | accepted))

  return jax.lax.fori_loop(0, 3, step, (string, length, jnp.ones(length.shape, bool)))


def value(string: jax.Array, length: jax.Array, base: int) -> jax.Array:
  """The number string[:length] writes (int32; the caller keeps it below 2^31)."""
  slot = jnp.arange(string.shape[-1])
  power = jnp.clip(length[..., None] - 1 - slot, 0)
  return jnp.sum(jnp.where(slot < length[..., None], string * base**power, 0), axis=-1)


def _edit(key, string, length, pivot, pivot_length, *, base, max_digits, limit):
  """The first accepted of ATTEMPTS attempts per string."""
  size = string.shape[-1]
  s = jnp.broadcast_to(string[..., None, :], string.shape[:-1] + (ATTEMPTS, size))
  ell = jnp.broadcast_to(length[..., None], s.shape[:-1])
  op_key, u_key, pair_key = jax.random.split(key, 3)
  op = rng.randint(op_key, ell.shape, 0, 4)
  u, v = rng.uniform(u_key, (2,) + ell.shape)
  slot = jnp.arange(size)
  at = lambda idx: jnp.take_along_axis(s, idx.clip(0, size - 1)[..., None], -1)[..., 0]
  right = jnp.take_along_axis(s, jnp.broadcast_to((slot - 1).clip(0), s.shape), -1)
  left = jnp.take_along_axis(s, jnp.broadcast_to((slot + 1).clip(max=size - 1), s.shape), -1)

  # Insert: a slot in 0..L, a digit that is not a leading 0.
  i = jnp.floor(u * (ell + 1)).astype(jnp.int32)
  digit = jnp.where(i == 0, 1 + jnp.floor(v * (base - 1)), jnp.floor(v * base)).astype(jnp.int32)
  inserted = jnp.where(slot < i[..., None], s,
                       jnp.where(slot == i[..., None], digit[..., None], right))
  # Delete: a slot, never the first when a 0 follows it.
  zero_next = at(jnp.ones_like(ell)) == 0
  d = jnp.where(zero_next, 1 + jnp.floor(u * (ell - 1)), jnp.floor(u * ell)).astype(jnp.int32)
  deleted = jnp.where(slot < d[..., None], s, left)
  # Swap: the first of SWAP_DRAWS pairs that changes the string without a leading 0.
  pu, pv = rng.uniform(pair_key, (2,) + ell.shape + (SWAP_DRAWS,))
  a = jnp.floor(pu * ell[..., None]).astype(jnp.int32)
  b = jnp.floor(pv * (ell[..., None] - 1)).astype(jnp.int32)
  b = b + (b >= a)
  lo, hi = jnp.minimum(a, b), jnp.maximum(a, b)
  pick_s = lambda idx: jnp.take_along_axis(s, idx.clip(0, size - 1), -1)
  s_lo, s_hi = pick_s(lo), pick_s(hi)
  good = (s_lo != s_hi) & ~((lo == 0) & (s_hi == 0))
  first = jnp.argmax(good, axis=-1)[..., None]
  lo, hi = (jnp.take_along_axis(x, first, -1)[..., 0] for x in (lo, hi))
  swapped = jnp.where(slot == lo[..., None], at(hi)[..., None],
                      jnp.where(slot == hi[..., None], at(lo)[..., None], s))
  # Replace: uniform over the (slot, new digit) pairs, no 0 in front.
  first_digit = s[..., 0]
  front = (base - 1) - (first_digit != 0)  # Choices for the first slot.
  r = jnp.floor(u * (front + (base - 1) * (ell - 1))).astype(jnp.int32)
  in_front = r < front
  front_digit = 1 + r
  front_digit += (first_digit != 0) & (front_digit >= first_digit)
  rest = r - front
  j = jnp.where(in_front, 0, 1 + rest // (base - 1))
  rest_digit = rest % (base - 1)
  rest_digit += rest_digit >= at(j)
  new_digit = jnp.where(in_front, front_digit, rest_digit)
  replaced = jnp.where(slot == j[..., None], new_digit[..., None], s)

  new = jnp.select([op[..., None] == c for c in range(4)], [inserted, deleted, swapped, replaced])
  new_length = ell + (op == INSERT) - (op == DELETE)
  new = jnp.where(slot < new_length[..., None], new, 0)
  allowed = jnp.select([op == INSERT, op == DELETE, op == SWAP],
                       [ell != max_digits, ell > 1, (ell > 1) & jnp.any(good, -1)], True)
  # A full buffer only holds numbers past the limit (S = n*k + 1 digits, no leading 0).
  in_range = (new_length < size) & (value(new, new_length, base) < limit)
  differs = (new_length != pivot_length[..., None]) | jnp.any(new != pivot[..., None, :], -1)
  accepted = allowed & in_range & differs
  first = jnp.argmax(accepted, axis=-1)
  new = jnp.take_along_axis(new, first[..., None, None], -2)[..., 0, :]
  new_length = jnp.take_along_axis(new_length, first[..., None], -1)[..., 0]
  return new, new_length, jnp.any(accepted, axis=-1)
