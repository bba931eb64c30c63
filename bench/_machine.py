"""What every benchmark prints first: the machine, the device, the load, the versions."""

from __future__ import annotations

import os
import platform


def machine_header(*, threads: int, extra: str = "") -> tuple[str, str, tuple[float, ...]]:
    """Set torch's thread count (0: leave it), print the machine lines.

    Returns:
        (machine, device, load average before the run), for the JSON record.
    """
    import torch
    import transformers

    if threads > 0:
        torch.set_num_threads(threads)
    cuda = torch.cuda.is_available()
    device = (torch.cuda.get_device_name(0) if cuda
              else f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)")
    machine = f"{platform.machine()} {platform.system()} {platform.processor() or ''}".strip()
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(f"machine: {machine} | device: {device} | load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"{extra}torch {torch.__version__}, transformers {transformers.__version__}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}")
    return machine, device, tuple(load)
