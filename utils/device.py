"""Device helpers shared by the engine, the eval and the benchmarks."""

from __future__ import annotations

import torch

from draftheads.utils.errors import ConfigError


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so wall-clock timings cover it (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 dot products natively (AVX512-BF16 or AMX-BF16); only Linux's
    /proc/cpuinfo is read, so elsewhere this says no and fp32 stays the default."""
    try:
        with open("/proc/cpuinfo") as handle:
            flags = next((line for line in handle if line.startswith("flags")), "")
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))


def resolve_device(name: str) -> torch.device:
    """`auto`: cuda when available, else cpu; anything else as given."""
    return torch.device(name if name != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))


def resolve_dtype(name: str, device: torch.device) -> tuple[str, str]:
    """The dtype to decode in for `name` (auto, float32, bfloat16, float16) on `device`, and one line
    saying why (or warning of the slower path taken). Refuses fp16 on a CPU (ConfigError)."""
    if device.type == "cuda":
        bf16 = torch.cuda.is_bf16_supported()
        if name == "auto":
            return ("bfloat16", "bf16: the GPU supports it") if bf16 else ("float16", "fp16: the GPU has no bf16")
        if name == "bfloat16" and not bf16:
            return name, "warning: this GPU has no native bf16; bf16 is emulated and slower than float16"
        return name, f"{name}: as asked"
    if name == "float16":
        raise ConfigError(
            "dtype float16 on a CPU: PyTorch has no fast fp16 CPU kernels; "
            "use bfloat16 (native on CPUs with avx512_bf16/amx_bf16) or float32"
        )
    native = cpu_has_native_bf16()
    if name == "auto":
        if native:
            return "bfloat16", "bf16: this CPU has native bf16 dot products (avx512_bf16/amx_bf16)"
        return "float32", "fp32: this CPU has no native bf16 dot products"
    if name == "bfloat16" and not native:
        return (
            name,
            "warning: this CPU has no native bf16 dot products (avx512_bf16/amx_bf16): bf16 is emulated and usually slower than float32",
        )
    return name, f"{name}: as asked"
