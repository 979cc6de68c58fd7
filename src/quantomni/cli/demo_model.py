"""quantomni demo-model DIR --arch flux|qwen-image|sd3"""

from __future__ import annotations

from quantomni.demo_models import DEMO_ARCHS


def add_arguments(p):
    p.add_argument("dir", help="output directory")
    p.add_argument("--arch", default="flux", choices=DEMO_ARCHS)
    p.add_argument("--seed", type=int, default=0)


def run(args) -> int:
    from quantomni.demo_models import write_demo_model

    path = write_demo_model(args.dir, args.arch, seed=args.seed)
    print(f"wrote tiny random-weight {args.arch} pipeline to {path}")
    return 0
