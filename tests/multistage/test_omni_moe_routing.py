"""The router (mlp.gate) is never quantized and routes exactly as in BF16."""

import torch


def _route_capture(model):
    routes = {}

    def hook(name):
        def fn(mod, args, out):
            routes[name] = out[2].clone()  # router_indices [T, k]
        return fn

    handles = [layer.mlp.gate.register_forward_hook(hook(i))
               for i, layer in enumerate(model.thinker.model.language_model.layers)]
    return routes, handles


def test_router_untouched_and_routing_identical(omni_engine):
    base = omni_engine(None)
    # experts only (attention kept BF16) so the first MoE layer sees identical inputs
    q = omni_engine({"thinker": {"method": "fp8", "ignored_layers": ["*self_attn*"]}}, moe_backend="grouped")
    for lb, lq in zip(base.model.thinker.model.language_model.layers, q.model.thinker.model.language_model.layers):
        assert type(lq.mlp.gate) is type(lb.mlp.gate)
        assert lq.mlp.gate.weight.dtype == torch.bfloat16
        assert torch.equal(lq.mlp.gate.weight, lb.mlp.gate.weight)
    prompt = "routing is decided before the experts run " * 2
    rb, hb = _route_capture(base.model)
    rq, hq = _route_capture(q.model)
    try:
        base.thinker_logits(prompt)
        q.thinker_logits(prompt)
    finally:
        for h in hb + hq:
            h.remove()
    assert torch.equal(rb[0], rq[0])
    # later layers see slightly different hidden states; routing still mostly agrees
    agree = float((rb[1].sort(-1).values == rq[1].sort(-1).values).all(-1).float().mean())
    assert agree > 0.8
    plan = q.plans["thinker"]
    experts = [r for r in plan.records if r.name.endswith("experts.gate_up_proj")]
    assert len(experts) == 2 and all(r.quantized and r.backend.startswith("moe-grouped") for r in experts)
    assert not any("gate" == r.name.split(".")[-1] for r in plan.records)  # the router is no Linear record
