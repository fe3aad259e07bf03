"""Development stand-in for model.train (same run_dir contract), used until the real entry point lands."""
import json, math, os, sys, time
from pathlib import Path
import torch.distributed as dist
import yaml

args = sys.argv[1:]
cfg = yaml.safe_load(open(args[args.index("--config") + 1]))
for i, a in enumerate(args):
    if a == "--set":
        k, v = args[i + 1].split("=", 1)
        node = cfg
        *path, last = k.split(".")
        for p in path:
            node = node.setdefault(p, {})
        node[last] = yaml.safe_load(v)
resume = "--resume" in args
run = Path(cfg["run_dir"]); rank = int(os.environ["RANK"])
dist.init_process_group("gloo")
(run / "heartbeat").mkdir(parents=True, exist_ok=True); (run / "checkpoints").mkdir(exist_ok=True)
start = int((run / "checkpoints" / "latest").read_text()) if resume and (run / "checkpoints" / "latest").exists() else 0
stall = (cfg.get("debug") or {}).get("stall_at_step")
t0 = time.time()
for step in range(start + 1, cfg["steps"] + 1):
    if stall and step == stall and rank == 0:
        time.sleep(10**6)
    time.sleep(0.3)
    import torch; dist.all_reduce(torch.ones(1))
    (run / "heartbeat" / f"rank{rank}").touch()
    if rank == 0:
        with open(run / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"step": step, "loss": 5 / step, "lr": 1e-3, "grad_norm": 1.0, "tokens_per_s": 1000.0, "mfu": 0.01, "tokens_seen": step * 512, "time": time.time()}) + "\n")
            if step % 5 == 0:
                f.write(json.dumps({"step": step, "val_loss": 6 / step, "val_ppl": math.exp(6 / step)}) + "\n")
        if step % 4 == 0:
            (run / "checkpoints" / "latest").write_text(str(step))
        print(f"step {step}", flush=True)
if rank == 0:
    (run / "COMPLETED.json").write_text(json.dumps({"step": cfg["steps"], "final_loss": 5 / cfg["steps"], "val_loss": 6 / cfg["steps"], "tokens_seen": cfg["steps"] * 512, "wall_s": time.time() - t0, "checkpoint": str(run / "checkpoints")}))
dist.destroy_process_group()
