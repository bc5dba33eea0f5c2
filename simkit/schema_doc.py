"""Render the scenario schema as the key reference in docs/scenario.md (kept true by a test)."""

from __future__ import annotations

from typing import Any

from simkit.scenario import json_schema


def _type(node: dict[str, Any], defs: dict[str, Any]) -> str:
    if "$ref" in node or "oneOf" in node:
        return "mapping"
    if "anyOf" in node:
        parts = [_type(x, defs) for x in node["anyOf"] if x.get("type") != "null"]
        return " or ".join(dict.fromkeys(parts))
    if "enum" in node:
        return " \\| ".join(f"`{v}`" for v in node["enum"])
    if "const" in node:
        return f"`{node['const']}`"
    t = node.get("type", "any")
    if t == "array":
        return f"list of {_type(node.get('items', {}), defs)}"
    if t == "object":
        return "mapping"
    return {"integer": "int", "number": "number", "string": "string", "boolean": "bool"}.get(t, t)


def _default(node: dict[str, Any], required: bool = True) -> str:
    if "default" not in node:
        return "required" if required else "(computed)"
    d = node["default"]
    if isinstance(d, dict):
        return "(see below)" if d else "{}"
    return f"`{d}`" if d is not None else "none"


def key_rows() -> list[tuple[str, str, str, str]]:
    s = json_schema()
    defs = s["$defs"]
    rows: list[tuple[str, str, str, str]] = []

    def walk(node: dict[str, Any], path: str) -> None:
        if "$ref" in node:
            node = defs[node["$ref"].split("/")[-1]]
        if "oneOf" in node and "discriminator" in node:
            union(node, path)
            return
        if "anyOf" in node:
            for x in node["anyOf"]:
                if "$ref" in x:
                    walk(x, path)
            return
        req = set(node.get("required", []))
        for k, v in node.get("properties", {}).items():
            key = f"{path}{k}"
            rows.append((key, _type(v, defs), _default(v, k in req), " ".join(v.get("description", "").split())))
            walk(v, key + ".")

    def union(node: dict[str, Any], path: str) -> None:
        """A discriminated union (plan.batching: one options model per policy): the tag's row
        lists every choice; every other key gets one row, naming the choices that have it."""
        tag_name = node["discriminator"]["propertyName"]
        members = {tag: defs[ref.split("/")[-1]] for tag, ref in node["discriminator"]["mapping"].items()}
        order = [defs[x["$ref"].split("/")[-1]]["properties"][tag_name]["const"] for x in node["oneOf"]]
        default = node.get("default", {}).get(tag_name)
        rows.append((f"{path}{tag_name}", " \\| ".join(f"`{t}`" for t in order),
                     f"`{default}`" if default is not None else "required",
                     f"One of the registered choices: {', '.join(order)}; a key below marked with choices belongs to those only."))
        seen: dict[str, list[str]] = {}
        for tag in order:
            for k in members[tag]["properties"]:
                if k != tag_name:
                    seen.setdefault(k, []).append(tag)
        for k, tags in seen.items():
            v = members[tags[0]]["properties"][k]
            who = "" if len(tags) == len(order) else f"({', '.join(tags)}) "
            rows.append((f"{path}{k}", _type(v, defs), _default(v), who + " ".join(v.get("description", "").split())))

    walk(s, "")
    return rows


def render() -> str:
    out = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for key, typ, default, desc in key_rows():
        out.append(f"| `{key}` | {typ} | {default} | {desc.replace('|', '/')} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(render(), end="")
