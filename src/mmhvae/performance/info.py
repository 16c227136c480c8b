"""`mmhvae info`: what a configuration or a model file is, and what one slice costs (Section 5.1)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from mmhvae.config import load_config
from mmhvae.evaluation.scoring import method_names
from mmhvae.model_file import load_model_file
from mmhvae.performance.cost import inference_latency, macs_per_slice, method_network, parameter_count


def network_lines(network: torch.nn.Module, source: str, meta: dict) -> list[str]:
    """The block of one network: its modalities, grid, structure, cost and, for a model file, its training."""
    cfg = network.config
    lines = [f"{source}", f"  modalities        {','.join(cfg.modalities)}",
             f"  image size        {cfg.image_size}x{cfg.image_size}"]
    if hasattr(cfg, "stochastic_groups"):
        lines += [f"  latent groups     {cfg.stochastic_groups} of {cfg.num_pool + 1} ({cfg.num_pool} poolings)",
                  f"  options           topdown={cfg.topdown} heads={cfg.heads} fusion={cfg.fusion} "
                  f"encoder={getattr(cfg, 'encoder', 'per_modality')}"]
    else:
        lines.append(f"  network           {cfg.variant}")
    lines += [f"  parameters        {parameter_count(network):,}",
              f"  MACs per slice    {macs_per_slice(network) / 1e9:.3f} G (all inputs), "
              f"{macs_per_slice(network, 1) / 1e9:.3f} G ({cfg.modalities[0]} only)"]
    if meta.get("steps") is not None:
        lines.append(f"  trained           {meta.get('method', 'mmhvae')}, {meta['steps']} steps, "
                     f"{meta.get('train_minutes', 0):.1f} min")
    if meta.get("init_from"):  # these steps continued earlier weights: say so, the count above is not the total
        start = meta["init_from"]
        lines.append(f"  started from      the weights in {start['path']} (checksum {start['checksum'][:12]}, "
                     f"itself trained {start.get('steps', '?')} steps)")
        if start.get("fresh") or start.get("grown"):  # parts that did not come (wholly) from that file
            parts = [f"{part} (fresh)" for part in start.get("fresh", [])]
            parts += [f"{part} ({count} new tensors)" for part, count in start.get("grown", {}).items()]
            lines.append(f"  not from it       {', '.join(parts)}")
    if meta.get("vit_weights"):
        vit = meta["vit_weights"]
        lines.append(f"  transformer from  the ViT checkpoint {vit['path']} (sha256 {vit['checksum'][:12]})")
    return lines


def cost_table(networks: dict[str, torch.nn.Module], latency: bool, repeats: int = 5) -> str:
    """Markdown: parameters, MACs and (optionally) CPU latency per slice of each network, as in Section 5.1."""
    header = "| network | parameters | GMACs per slice | latency per slice, batch 1 (ms) |"
    lines = [header, "|---|---|---|---|"]
    for name, network in networks.items():
        ms = f"{1000 * inference_latency(network, 1, repeats, torch.device('cpu')):.1f}" if latency else "-"
        lines.append(f"| {name} | {parameter_count(network):,} | {macs_per_slice(network) / 1e9:.3f} | {ms} |")
    threads = torch.get_num_threads()
    timing = f"; CPU, {threads} threads; latency the median of {repeats} runs" if latency else ""
    return "\n".join(lines) + f"\n\nAll inputs present{timing}."


def describe(config: str | None = None, model: Path | Sequence[Path] | None = None, latency: bool = False,
             methods: Sequence[str] = ()) -> str:
    """Text of `mmhvae info`: one block per network, then a cost table when several are compared. A config
    without `methods` is described with its own `train.method`."""
    networks: dict[str, torch.nn.Module] = {}
    blocks: list[str] = []
    if model is not None:
        paths = [Path(model)] if isinstance(model, (str, Path)) else [Path(m) for m in model]
        loaded = [load_model_file(p) for p in paths]
        for name, path, each in zip(method_names(paths, loaded), paths, loaded):
            networks[name] = each.model.eval()
            blocks.append("\n".join(network_lines(each.model, f"model file {path}", each.meta)))
    else:
        for method in methods or (load_config(config or "tiny").train.method,):  # default: the config's own
            network, _ = method_network(config or "tiny", method)
            networks[method] = network.eval()
            blocks.append("\n".join(network_lines(network, f"config {config or 'tiny'}, method {method}", {})))
    if latency or len(networks) > 1:
        blocks.append(cost_table(networks, latency))
    return "\n\n".join(blocks)
