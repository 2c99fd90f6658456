"""The most one server core can sustain at each batch size, its own work counted, from a calibration.

    cd results/reference/slo-cpu-2core && python capacity.py amd-host/sim/calibration__cpu.json

The ceiling times the pipeline alone. A server's one core also parses, queues and answers each
request and hands each batch to its worker thread and back; the calibration measured that work
(servelab/sim/calibration.py). Per batch of b in arrival order, the core is busy for the
ceiling's measured seconds per batch plus per_batch + offload + b x per_request, so it can
sustain at most b over that sum, requests per second. A load near that figure queues without
bound, whatever the plan.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def capacity_by_batch_size(calibration: dict) -> list[dict]:
    own = calibration["http"]
    ceiling = calibration["ceiling"]["ceiling_seq_per_s"]
    rows = []
    for point in calibration["ceiling"]["by_batch_size"]:
        b = point["batch_size"]
        batch_s = point["seconds"] * b / point["sequences"]
        busy_s = batch_s + own["per_batch_s"] + own["offload_s"] + b * own["per_request_s"]
        sustained = b / busy_s
        rows.append({"batch_size": b, "pipeline_seq_per_s": point["seq_per_s"],
                     "server_seq_per_s": sustained, "x_ceiling": sustained / ceiling})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("calibrations", nargs="+", type=Path, help="calibration__DEVICE.json files")
    for path in parser.parse_args().calibrations:
        calibration = json.loads(path.read_text())
        print(f"{path}: ceiling {calibration['ceiling']['ceiling_seq_per_s']:.1f} seq/s")
        print(f"{'batch':>7}{'pipeline alone':>16}{'with the server':>17}{'x ceiling':>11}")
        for row in capacity_by_batch_size(calibration):
            print(f"{row['batch_size']:7d}{row['pipeline_seq_per_s']:14.1f}/s{row['server_seq_per_s']:15.1f}/s"
                  f"{row['x_ceiling']:11.2f}")


if __name__ == "__main__":
    main()
