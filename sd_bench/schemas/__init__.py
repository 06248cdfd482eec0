"""The published JSON Schemas of sd-bench's files, and one validator for them.

Why a JSON Schema file and not only Python checks: other tools (lm-eval pipelines, dashboards, Every Eval
Ever converters) can check an sd-bench result without importing sd-bench. `result-v1.json` describes
`sd-bench/result/v1` (sd_bench/tables.py writes and reads it); it ships inside the wheel beside this file.

    from sd_bench.schemas import validate_result
    validate_result(json.load(open("eval/t2_base/sd_aime24.json")), "eval/t2_base/sd_aime24.json")
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULT_SCHEMA_FILE = HERE / "result-v1.json"


class SchemaError(ValueError):
    """A file does not match its published schema; the message names the file, the field and the rule."""


@functools.cache
def result_schema() -> dict[str, Any]:
    """The `sd-bench/result/v1` JSON Schema (draft 2020-12) as a dict."""
    return json.loads(RESULT_SCHEMA_FILE.read_text())


@functools.cache
def _validator():
    import jsonschema

    schema = result_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def result_errors(data: Any) -> list[str]:
    """Every violation of the result schema as 'field.path: message' (empty when `data` is valid)."""
    out = []
    for err in sorted(_validator().iter_errors(data), key=lambda e: list(map(str, e.absolute_path))):
        field = ".".join(str(p) for p in err.absolute_path) or "<top level>"
        out.append(f"{field}: {err.message}")
    return out


def validate_result(data: Any, where: str = "<result>") -> dict[str, Any]:
    """`data` if it is a valid sd-bench/result/v1 document; else SchemaError naming `where` and the field."""
    errors = result_errors(data)
    if errors:
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise SchemaError(f"{where}: {errors[0]}{more} [schema: {RESULT_SCHEMA_FILE.name}]")
    return data
