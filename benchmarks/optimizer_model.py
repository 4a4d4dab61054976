"""Ranger's flat-buffer step vs the per-parameter loop; nbhelpers' model vs the seed's.

    python benchmarks/optimizer_model.py [--device cpu|cuda] [--width 32] [--batch 128]

At a small width (32 channels) the arithmetic is tiny and the cost is the
number of kernels launched, as it is on a GPU at any width: that is where an
update of a dozen kernels over all parameters should pay.
"""
import argparse
import copy

import torch

from common import compare, machine, write_results
from nbhelpers import Model, Ranger
from nbhelpers.runtime import pick_device
from nbhelpers.seed_reference import SeedModel, SeedRanger


def optimizer_step(kind, model: torch.nn.Module, device):
    """`step` of a `kind` optimizer on a copy of the model's parameters, gradients set."""
    model = copy.deepcopy(model)
    generator = torch.Generator(device=device).manual_seed(0)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, device=device, generator=generator) * 1e-3
    optimizer = kind(model.parameters(), lr=1e-3, weight_decay=1e-2)
    for _ in range(6):  # past RAdam's warm-up steps, so both take the rectified branch
        optimizer.step()
    return optimizer.step


def forward_backward(model, device, batch: int):
    images = torch.randn(batch, 3, 32, 32, device=device)
    labels = torch.randint(0, 10, (batch,), device=device)
    model.train()

    def step():
        model.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(images), labels).backward()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default=None)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    device = pick_device(args.device)
    sizes = dict(num_blocks=3, input_channels=3, backbone_out_channels=args.width,
                 num_conv_layer=3, hidden_size=max(64, args.width // 2), num_classes=10)
    torch.manual_seed(0)
    ours = Model(**sizes).to(device)
    seed = SeedModel(**sizes).to(device)

    results = {"machine": machine(device), "sizes": sizes, "batch": args.batch,
               "parameter_tensors": len(list(ours.parameters()))}
    steps = compare({"flat": optimizer_step(Ranger, ours, device),
                     "per_parameter": optimizer_step(SeedRanger, ours, device)},
                    device, repeats=args.repeats * 10, warmup=5)
    flat, per_parameter = steps["flat"], steps["per_parameter"]
    results["ranger_step"] = {"nbhelpers_s": flat, "per_parameter_s": per_parameter,
                              "speedup": per_parameter / flat}
    print(f"Ranger step on {results['parameter_tensors']} tensors: flat {flat * 1e3:.2f} ms, "
          f"per-parameter {per_parameter * 1e3:.2f} ms -> {per_parameter / flat:.1f}x")

    passes = compare({"ours": forward_backward(ours, device, args.batch),
                      "seed": forward_backward(seed, device, args.batch)}, device, args.repeats)
    ours_s, seed_s = passes["ours"], passes["seed"]
    results["forward_backward"] = {"nbhelpers_s": ours_s, "seed_s": seed_s, "speedup": seed_s / ours_s}
    print(f"forward+backward, batch {args.batch}, width {args.width}: nbhelpers {ours_s * 1e3:.1f} ms, "
          f"seed {seed_s * 1e3:.1f} ms -> {seed_s / ours_s:.2f}x")
    write_results(f"optimizer_model_{device.type}_w{args.width}", results)


if __name__ == "__main__":
    main()
