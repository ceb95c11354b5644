#!/usr/bin/env python3
"""Trains the project's fastText model: 128-dim skipgram vectors of product words, the FastText
1x128 of the workloads embedstream is built for (see docs/records-and-models.md).

The corpus is the project's own: product titles and descriptions made here from fixed word lists
by a seeded generator (no download), so that words of one category share contexts and land near
each other. Training is deterministic: one thread (fastText 0.9.2 seeds its generator with the thread index), a seeded corpus, a small hash-bucket count so
that the model file stays near 20 MB. deploy/setup.sh runs it once with fasttext-wheel and
checks the result's sha256.

    python train_fasttext.py OUT_DIR
"""
import pathlib
import random
import sys

import fasttext

CATEGORIES = {
    "footwear": ["shoes", "sneakers", "boots", "sandals", "trainers", "loafers", "slippers", "heels"],
    "kitchen": ["knife", "pan", "skillet", "kettle", "grinder", "whisk", "spatula", "blender"],
    "audio": ["speaker", "headphones", "earbuds", "soundbar", "amplifier", "microphone", "turntable"],
    "office": ["desk", "lamp", "stapler", "notebook", "pen", "chair", "monitor", "keyboard"],
    "outdoor": ["tent", "backpack", "sleeping-bag", "lantern", "compass", "hammock", "stove"],
    "clothing": ["scarf", "jacket", "sweater", "shirt", "dress", "coat", "hoodie", "jeans"],
    "tools": ["hammer", "drill", "wrench", "screwdriver", "saw", "pliers", "level", "chisel"],
    "toys": ["puzzle", "doll", "blocks", "kite", "robot", "train-set", "teddy", "yo-yo"],
}
DETAILS = {
    "footwear": ["leather upper", "rubber sole", "breathable mesh", "arch support", "waterproof lining"],
    "kitchen": ["stainless steel", "non-stick coating", "dishwasher safe", "cast iron", "ceramic blade"],
    "audio": ["noise cancelling", "bluetooth", "deep bass", "long battery", "studio sound"],
    "office": ["adjustable height", "ergonomic", "led light", "recycled paper", "wireless"],
    "outdoor": ["ultralight", "weatherproof", "easy setup", "packable", "for camping and hiking"],
    "clothing": ["merino wool", "organic cotton", "slim fit", "machine washable", "warm lining"],
    "tools": ["hardened steel", "cordless", "magnetic tip", "rubber grip", "for woodworking"],
    "toys": ["for kids", "educational", "wooden", "bright colours", "ages three and up"],
}
ADJECTIVES = ["lightweight", "durable", "compact", "premium", "classic", "modern", "vintage", "handmade"]
COLOURS = ["red", "blue", "black", "white", "green", "grey", "brown", "yellow", "navy", "beige"]
BRANDS = [f"brand{n}" for n in range(60)]
LINES = 120_000
SEED = 20261202


def corpus(path: pathlib.Path) -> None:
    rng = random.Random(SEED)
    with path.open("w") as f:
        for n in range(LINES):
            category = rng.choice(sorted(CATEGORIES))
            thing = rng.choice(CATEGORIES[category])
            other = rng.choice(CATEGORIES[category])
            words = [rng.choice(BRANDS), rng.choice(ADJECTIVES), rng.choice(COLOURS), thing]
            words += rng.sample(DETAILS[category], 2) + ["like", "our", other, f"model{n % 500}"]
            f.write(" ".join(words) + "\n")


def main() -> None:
    out = pathlib.Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    text = out / "corpus.txt"
    corpus(text)
    model = fasttext.train_unsupervised(
        str(text), model="skipgram", dim=128, epoch=5, minCount=1, minn=3, maxn=6,
        bucket=38_000, thread=1, verbose=0,
    )
    model.save_model(str(out / "model.bin"))
    text.unlink()
    print(f"trained {out / 'model.bin'}: {len(model.words)} words, dim {model.get_dimension()}")


if __name__ == "__main__":
    main()
