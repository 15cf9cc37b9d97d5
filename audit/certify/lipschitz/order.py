"""Order statistics: max, min and sort, one by one and in the patterns of GroupSort.

Each of these is 1-Lipschitz in L2 on its values, and the patterns that Lipschitz networks
build from them are 1-Lipschitz as a whole, where taking them op by op would cost a factor
``sqrt(2)`` per activation:

- ``maximum(a, b)`` / ``minimum(a, b)`` (also ``torch.max(a, b)``, ``torch.min(a, b)``): each
  output entry moves by at most the larger move of its two operands, so a bound is
  ``sqrt(L_a^2 + L_b^2)`` (with broadcasting's repetitions);
- MaxMin (orthogonium, the demo network): ``cat([max(p, q), min(p, q)])`` with ``p, q`` the two
  halves of one split maps each pair to its sorted pair: 1-Lipschitz;
- a max or min over one dim (``max.dim``, ``amax``) or over everything: per slice,
  ``|max a - max b| <= max |a - b| <= ||a - b||``, and slices are disjoint: 1-Lipschitz;
- ``sort`` and ``topk`` values: sorting is 1-Lipschitz in L2 (the rearrangement inequality),
  and the top k are a projection of the sorted values;
- GroupSort 2 as deel-torchlip writes it: ``cat([min over d, max over d])`` of one value whose
  groups along ``d`` have at least 2 entries: ``(min, max)`` are two distinct coordinates of
  the sorted group, a projection of sort: 1-Lipschitz.  (A group of one entry would repeat it:
  ``sqrt(2)``; that case is not matched.)

The indices these operations return are integers that jump: a value carrying them refuses
every use (:attr:`_V.refusal`).
"""

from __future__ import annotations

import math

from audit.certify.lipschitz.values import _V, _broadcast_factor, _Call, _Ctx, _Dep, _operands

_INDICES = "it uses the indices of a max, min or sort (integers that jump: not Lipschitz)"
_BINARY = {"max": "maximum", "min": "minimum", "maximum": "maximum", "minimum": "minimum"}


def _h_maxmin_binary(call: _Call, ctx: _Ctx) -> _V:
    a, b = _operands(call)
    lip = 0.0
    for item in (a, b):
        if isinstance(item, _Dep):
            lip += (item.v.lip * _broadcast_factor(item, call.out_shape)) ** 2
    result = _V(math.sqrt(lip))
    if isinstance(a, _Dep) and isinstance(b, _Dep) and a.v.piece and b.v.piece:
        same_shape = a.shape is not None and tuple(a.shape) == tuple(b.shape or ())
        if same_shape:
            result.pair = (_BINARY[call.name], a.v.piece, b.v.piece)
    return result


def _h_max_min(call: _Call, ctx: _Ctx) -> _V:
    """``max``/``min`` in all three forms: of two tensors, over one dim, over everything."""
    second = call.get(1, "other" if "other" in call.kwargs else "dim")
    if isinstance(second, _Dep):
        return _h_maxmin_binary(call, ctx)
    dep = call.tensor(0, "input")
    if second is None:  # over every entry: one number
        ctx.add(call.where, call.kind, 1.0, f"{call.name} of all entries: 1-Lipschitz")
        return _V(dep.v.lip)
    values = _reduction(call, dep, int(call.const(1, "dim")), call.name)
    return _V(values.lip, parts=(values, _V(0.0, refusal=_INDICES)))


def _h_amax_amin(call: _Call, ctx: _Ctx) -> _V:
    dep = call.tensor(0, "input")
    dims = call.const(1, "dim", ())
    dims = [dims] if isinstance(dims, int) else list(dims or ())
    if len(dims) == 1:
        return _reduction(call, dep, int(dims[0]), call.name[1:])
    ctx.add(call.where, call.kind, 1.0, f"{call.name} over dims {dims or 'all'}: 1-Lipschitz")
    return _V(dep.v.lip)


def _reduction(call: _Call, dep: _Dep, dim: int, which: str) -> _V:
    ndim = len(dep.shape) if dep.shape is not None else 0
    dim = dim % ndim if ndim else dim
    size = int(dep.shape[dim]) if ndim else 0
    # A group of one entry is the entry itself: min and max of it would repeat it.
    group = (which, dep.v.token, dim) if size >= 2 else None
    return _V(dep.v.lip, group=group)


def _h_sort(call: _Call, ctx: _Ctx) -> _V:
    dep = call.tensor(0, "input")
    how = "sorted values: 1-Lipschitz" if call.name == "sort" else "top-k values: 1-Lipschitz"
    ctx.add(call.where, call.kind, 1.0, how)
    return _V(dep.v.lip, parts=(_V(dep.v.lip), _V(0.0, refusal=_INDICES)))


def cat_pattern(items: list[_Dep], ctx: _Ctx, where: str) -> _V | None:
    """The bound of ``cat(items)`` if the items form MaxMin or GroupSort 2, else None."""
    if len(items) != 2:
        return None
    a, b = items[0].v, items[1].v
    matched = _maxmin_pattern(a, b)
    if matched is not None:
        ctx.add(where, "MaxMin", 1.0, "max/min of two split halves: 1-Lipschitz")
        return _V(matched)
    if a.group is not None and b.group is not None:
        (one, source, dim), (other, source_b, dim_b) = a.group, b.group
        if {one, other} == {"max", "min"} and source == source_b and dim == dim_b:
            ctx.add(where, "GroupSort", 1.0, "min and max of each group (>= 2 entries): sorted")
            return _V(a.lip)
    return None


def _maxmin_pattern(a: _V, b: _V) -> float | None:
    """cat([maximum(p, q), minimum(p, q)]) with p, q the halves of one 2-way split."""
    if a.pair is None or b.pair is None or {a.pair[0], b.pair[0]} != {"maximum", "minimum"}:
        return None
    if {a.pair[1], a.pair[2]} != {b.pair[1], b.pair[2]} or a.pair[1] == a.pair[2]:
        return None
    p, q = a.pair[1], a.pair[2]
    if p[0] != q[0] or p[2] != 2 or {p[1], q[1]} != {0, 1}:
        return None
    return p[4]


HANDLERS = {
    "maximum": _h_maxmin_binary,
    "minimum": _h_maxmin_binary,
    "max": _h_max_min,
    "min": _h_max_min,
    "amax": _h_amax_amin,
    "amin": _h_amax_amin,
    "sort": _h_sort,
    "topk": _h_sort,
}
