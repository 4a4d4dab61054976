"""One epoch of augmented training batches: nbhelpers' in-memory loader vs the seed's DataLoader.

    python benchmarks/data_pipeline.py [--device cpu|cuda] [--epochs 1]

Both produce shuffled, randomly cropped and flipped, normalized batches of
128 from the 50,000 training images. The seed's pipeline decodes every image
into PIL and transforms it one at a time in 2 worker processes; nbhelpers
cuts whole batches out of one uint8 tensor on the device.
"""
import argparse
import time


from common import cifar10, machine, seed_train_loader, synchronize, write_results
from nbhelpers.data import CifarLoader
from nbhelpers.runtime import pick_device


def epoch_seconds(loader, device) -> tuple[float, int]:
    start = time.perf_counter()
    images = 0
    for batch, labels in loader:
        batch = batch.to(device, non_blocking=True)
        images += len(labels)
    synchronize(device)
    return time.perf_counter() - start, images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default=None)
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    device = pick_device(args.device)
    data = cifar10()

    ours = CifarLoader(data.train, 128, train=True, device=device, seed=0)
    seed = seed_train_loader(data.folder.parent)
    epoch_seconds(ours, device)  # warm-up: the device copy and first kernels
    results = {"machine": machine(device), "epochs": args.epochs}
    for name, loader in (("nbhelpers CifarLoader", ours), ("seed DataLoader (PIL, 2 workers)", seed)):
        times = []
        for epoch in range(args.epochs):
            if hasattr(loader, "set_epoch"):
                loader.set_epoch(epoch + 1)
            seconds, images = epoch_seconds(loader, device)
            times.append(seconds)
        results[name] = {"seconds_per_epoch": min(times), "images": images}
        print(f"{name:<34} {min(times):8.2f} s per epoch ({images:,} images)")
    ratio = results["seed DataLoader (PIL, 2 workers)"]["seconds_per_epoch"] / \
        results["nbhelpers CifarLoader"]["seconds_per_epoch"]
    results["speedup"] = ratio
    print(f"nbhelpers is {ratio:.1f}x faster on {results['machine']['device']}")
    write_results(f"data_pipeline_{device.type}", results)


if __name__ == "__main__":
    main()
