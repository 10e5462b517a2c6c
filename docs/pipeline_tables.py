"""The pipeline benchmarks of docs/benchmarks.md ("Pipeline across processes"), from their results
files alone: each ``bench-stages-*.json`` (written by ``torchrun … -m splitfx bench MODEL --stages 2
--json FILE``, with commit, command and machine) printed as ``bench --stages`` prints it, into
docs/pipeline-bench.md, which ``python docs/accuracy_tables.py`` splices between the
``pipeline-bench`` markers.

    python docs/pipeline_tables.py
"""
import json
from pathlib import Path

from splitfx.base.files import write_text
from splitfx.programs.pipeline_bench import PipelineBench

HERE = Path(__file__).parent
FILES = ["bench-stages-resnet50.json", "bench-stages-vit_small.json", "bench-stages-resnet18.json"]


def main() -> None:
    out = []
    for name in FILES:
        d = json.loads((HERE / name).read_text())
        command = d["command"].split("splitfx/__main__.py ")[-1].split(" -m splitfx ")[-1]
        out += [f"`{name}`: commit {d['commit'][:7]}, {d['machine']}; `GLOO_SOCKET_IFNAME=lo OMP_NUM_THREADS=1 "
                f"torchrun --standalone --nproc-per-node 2 -m splitfx {command}` (run in docs/)", "",
                "```", PipelineBench.from_dict(d).table(), "```", ""]
    write_text(HERE / "pipeline-bench.md", "\n".join(out))
    print("\n".join(out))


if __name__ == "__main__":
    main()
