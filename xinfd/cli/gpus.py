"""xinfctl commands of the slot table and live scaling: ``gpus``, ``cpus`` (the CPU thread budget), ``scale``."""

from __future__ import annotations

import argparse
from typing import Any

from xinfd.cli.client import EXIT_USAGE, CliError, ControlClient
from xinfd.cli.output import print_json, table


def cmd_gpus(client: ControlClient, args: argparse.Namespace) -> int:
    data = client.call("GET", "/v1/gpus")
    gpus: list[dict[str, Any]] = data["gpus"]
    if args.json:
        print_json(gpus)
        return 0
    inventory = data["inventory"]["summary"]
    if not gpus:
        print(f"{inventory}: replicas run on the CPU")
        return 0
    multi = "allowed" if data["allow_multi_replica_per_gpu"] else "not allowed"
    print(inventory)
    print(f"strategy: {data['strategy']}; several replicas per GPU: {multi}")
    rows = []
    for gpu in gpus:
        memory = f"{gpu['memory_mb']} MiB" + (
            f" ({gpu['free_mb']} free)" if gpu.get("free_mb") is not None else ""
        )
        held = gpu["replicas"] or [None]
        for n, replica in enumerate(held):
            first = n == 0
            rows.append(
                (
                    gpu["index"] if first else "",
                    gpu["name"] if first else "",
                    memory if first else "",
                    replica["label"] if replica else "idle",
                    replica["state"] if replica else "",
                    replica["reason"] if replica else "",
                )
            )
    print(table(rows, ("GPU", "NAME", "MEMORY", "REPLICA", "STATE", "WHY HERE")))
    return 0


def cmd_cpus(client: ControlClient, args: argparse.Namespace) -> int:
    cpus: dict[str, Any] = client.call("GET", "/v1/gpus")["cpus"]
    if args.json:
        print_json(cpus)
        return 0
    per = cpus["cpu_threads_per_replica"]
    policy = f"{per} thread(s) per replica (cpu_threads_per_replica)" if per else "split between CPU replicas"
    print(f"{len(cpus['cores'])} core(s) ({cpus['cores_list']}): {policy}")
    if cpus.get("source"):  # absent from a daemon older than the cgroup CPU quota
        print(f"cores from {cpus['source']}")
    if not cpus["replicas"]:
        print("no replica runs on the CPU")
        return 0
    rows = [(r["label"], r["threads"], r["cores_list"], r["reason"]) for r in cpus["replicas"]]
    print(table(rows, ("REPLICA", "THREADS", "CORES", "WHY")))
    return 0


def cmd_scale(client: ControlClient, args: argparse.Namespace) -> int:
    if args.replicas < 1:
        raise CliError(
            f"replicas must be at least 1 (use 'xinfctl terminate {args.model_uid}' to stop it), "
            f"got {args.replicas}",
            EXIT_USAGE,
        )
    model = client.call(
        "POST", f"/v1/models/{args.model_uid}/scale", {"replicas": args.replicas}, timeout=None
    )
    if args.json:
        print_json(model)
        return 0
    states = ", ".join(f"{r['label']} {r['state']}" for r in model["replicas"])
    print(f"{model['model_uid']}: {len(model['replicas'])} replica(s): {states}")
    return 0


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add this module's subcommands to the xinfctl parser."""
    sub.add_parser("gpus", parents=[common], help="GPUs, the replicas placed on each, and why").set_defaults(
        func=cmd_gpus
    )
    sub.add_parser(
        "cpus", parents=[common], help="the cores, and each CPU replica's threads and pinned cores"
    ).set_defaults(func=cmd_cpus)
    scale = sub.add_parser("scale", parents=[common], help="add or remove replicas of a running model")
    scale.add_argument("model_uid")
    scale.add_argument("replicas", type=int, help="the new number of replicas (>= 1)")
    scale.set_defaults(func=cmd_scale)
