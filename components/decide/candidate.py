"""One candidate, pinned by version: the artifacts a run judges, registers and reports.

The convert stage's engine artifact names the export it serves, the export names the model and
the graph it was built from, the pruned model names its student, teacher and graph. Following
that lineage from the engine gives every artifact of the candidate, so downstream stages receive
one explicit reference (never "the day's current version", which a partial re-run can move) and
verify that the chain is consistent: the candidate is scored on the graph it was trained on.

The candidate id (``<day>-<hash>``) is the registry version the candidate registers as. It hashes
what was judged: the candidate's artifacts, the config (gates included) and the baseline it was
judged against, so the gate table, the blessing, the registry, the report and the logs all name
the same id, and re-judging the same candidate against the same baseline lands on the same id.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from components.core.catalog import ArtifactRef, Layout

ENGINE_KIND, EXPORT_KIND, GRAPH_KIND, PRUNED_KIND = "engines", "exports", "graphs", "models/pruned"


def _ref(layout: Layout, lineage: dict[str, str]) -> ArtifactRef:
    # Resolved under this root (the manifest's absolute path may predate a moved root).
    path = layout.artifacts(lineage["kind"]) / lineage["day"] / lineage["version"]
    return ArtifactRef.from_dict({**lineage, "path": str(path)})


def _inputs(ref: ArtifactRef) -> list[dict[str, str]]:
    inputs = ref.manifest.get("inputs", {})
    return list(inputs.values()) if isinstance(inputs, dict) else list(inputs)


@dataclass(frozen=True)
class CandidateRefs:
    """Every artifact of one candidate, by version."""

    day: str
    graph: ArtifactRef
    teacher: ArtifactRef | None
    pruned: ArtifactRef
    export: ArtifactRef
    engine: ArtifactRef

    @classmethod
    def from_engine(cls, layout: Layout, engine: ArtifactRef | dict[str, Any]) -> "CandidateRefs":
        """Follow the lineage from an engine artifact; raise if it is broken or inconsistent."""
        if isinstance(engine, dict):
            engine = _ref(layout, {"kind": ENGINE_KIND, "day": engine["day"], "version": engine["version"]})
        export = _ref(layout, engine.manifest["inputs"]["export"])
        export_inputs = export.manifest["inputs"]
        pruned, graph = _ref(layout, export_inputs["model"]), _ref(layout, export_inputs["graph"])
        model_inputs = _inputs(pruned)
        graphs = {i["version"] for i in model_inputs if i["kind"] == GRAPH_KIND}
        if graphs != {graph.version}:
            raise ValueError(f"candidate {pruned.kind} {pruned.version} was trained on graph(s) {sorted(graphs)}, "
                             f"but export {export.version} scores it on graph {graph.version}")
        teachers = [i for i in model_inputs if i["kind"].startswith("models/teacher")]
        days = {engine.day, export.day, pruned.day, graph.day}
        if len(days) != 1:
            raise ValueError(f"candidate artifacts span days {sorted(days)} (engine {engine.version})")
        return cls(day=engine.day, graph=graph, teacher=_ref(layout, teachers[0]) if teachers else None,
                   pruned=pruned, export=export, engine=engine)

    def student(self, layout: Layout) -> ArtifactRef | None:
        """The distilled student the pruned candidate was made from (not part of the candidate's id)."""
        students = [i for i in _inputs(self.pruned) if i["kind"] == "models/student"]
        return _ref(layout, students[0]) if students else None

    def versions(self) -> dict[str, str | None]:
        return {"graph": self.graph.version, "teacher": self.teacher.version if self.teacher else None,
                "pruned": self.pruned.version, "export": self.export.version, "engine": self.engine.version}

    def as_dict(self) -> dict[str, Any]:
        return {"day": self.day, **{k: (r.as_lineage() if r else None) for k, r in
                                    (("graph", self.graph), ("teacher", self.teacher), ("pruned", self.pruned),
                                     ("export", self.export), ("engine", self.engine))}}

    @classmethod
    def from_dict(cls, layout: Layout, data: dict[str, Any]) -> "CandidateRefs":
        """Re-resolve from a recorded reference and re-check the chain (nothing is taken on trust)."""
        refs = cls.from_engine(layout, data["engine"])
        if refs.versions() != {k: (data[k]["version"] if data.get(k) else None) for k in refs.versions()}:
            raise ValueError(f"recorded candidate {data} does not match its engine's lineage {refs.versions()}")
        return refs


def candidate_id(refs: CandidateRefs, config_hash: str, baseline_version: str | None) -> str:
    """``<day>-<hash>`` of the candidate's artifacts, the config and the baseline it is judged against."""
    blob = json.dumps({"day": refs.day, "artifacts": refs.versions(), "config_hash": config_hash,
                       "baseline": baseline_version}, sort_keys=True).encode()
    return f"{refs.day}-{hashlib.sha256(blob).hexdigest()[:10]}"
