"""Environment section: the distinct machines and library versions the sources were measured with."""
from __future__ import annotations

from slimbench.report.load import Collection
from slimbench.report.table import Column


_ENV_KEYS = ("slimbench", "torch", "python", "platform", "device", "threads", "cpu_count", "commit")


def _env_from_provenance(p: dict) -> dict:
    v = p.get("versions") or {}
    return {"slimbench": v.get("slimbench"), "torch": v.get("torch"), "python": p.get("python"),
            "platform": p.get("platform"), "device": " ".join(x for x in (p.get("device"), p.get("device_name")) if x),
            "threads": p.get("threads"), "cpu_count": p.get("cpu_count"), "commit": p.get("commit")}


def environment_rows(c: Collection) -> list[dict]:
    """Distinct environments over all sources, each with the files measured in it."""
    envs: list[tuple[str, dict, str]] = []  # (kind, env, path)
    for i in c.runs:
        envs.append(("sweep run", _env_from_provenance(i.data.env), i.path))
    for i in c.snr:
        envs.append(("snr", _env_from_provenance(i.data.provenance or {}), i.path))
    for i in c.rules:
        prov = (i.data.provenance or {}).get("snr_provenance") or {}
        if prov:
            envs.append(("rules (its SNR run)", _env_from_provenance(prov), i.path))
    for i in c.profiles:
        envs.append(("profile", _env_from_provenance(i.data.get("provenance") or {}), i.path))
    for i in c.audits:
        envs.append(("audit", _env_from_provenance(i.data.get("provenance") or {}), i.path))
    for i in c.benchmarks:
        m, ci = i.data.get("machine_info") or {}, i.data.get("commit_info") or {}
        first = next((b.get("extra_info") or {} for b in i.data["benchmarks"]), {})
        commit = ci.get("id")
        if commit and ci.get("dirty"):
            commit += "+dirty"
        cpu = (m.get("cpu") or {}).get("brand_raw") or m.get("processor") or m.get("machine")
        envs.append(("pytest-benchmark", {"slimbench": first.get("slimbench"), "torch": first.get("torch"),
                                          "python": m.get("python_version"),
                                          "platform": m.get("platform"),
                                          "device": " ".join(str(x) for x in (first.get("device"), cpu) if x),
                                          "threads": first.get("threads"), "cpu_count": (m.get("cpu") or {}).get("count"),
                                          "commit": commit}, i.path))
    rows: list[dict] = []
    index: dict[tuple, dict] = {}
    for kind, env, path in envs:
        key = (kind,) + tuple(env.get(k) for k in _ENV_KEYS)
        if key not in index:
            index[key] = {"kind": kind, **env, "files": 0, "sources": []}
            rows.append(index[key])
        index[key]["files"] += 1
        index[key]["sources"].append(path)
    return rows


ENV_COLUMNS = [Column("kind", "source"), Column("files", "files", "int"), Column("slimbench", "slimbench"),
               Column("torch", "torch"), Column("python", "python"), Column("device", "device"),
               Column("threads", "threads"), Column("cpu_count", "cpus"), Column("commit", "commit"),
               Column("platform", "platform")]
