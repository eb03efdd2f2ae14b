"""What a kube-apiserver does with a CustomResourceDefinition and a custom resource, for
tests that have no API server.

Two halves:

- `crd_problems`: the checks the API server runs when a CRD is created, from
  k8s.io/apiextensions-apiserver: `pkg/apis/apiextensions/validation/validation.go`
  (forbidden keywords, `properties` vs `additionalProperties`, list-type/map-type rules,
  `x-kubernetes-validations` well-formedness, names, versions, printer columns) and
  `pkg/apiserver/schema/validation.go` (structural: every node typed, metadata at the root
  restricted to name/generateName, value validations under allOf/anyOf/oneOf/not free of
  types and extensions). Plus this project's own rules: bounds on every array, map and
  string (CEL cost estimation multiplies by them), CEL rules referring only to declared
  fields, printer columns resolving into the schema, status subresource iff a status schema.
- `ResourceValidator`: what happens to a custom resource on create: unknown fields pruned
  (or refused, as kubectl's default `--validate=strict` asks), defaults applied, the OpenAPI
  value validations (jsonschema; `x-kubernetes-int-or-string` is `[integer, string]`, as
  the API server converts it), list-map key uniqueness, then the CEL rules evaluated with
  cel-python (standard CEL; the Kubernetes CEL libraries are not available there, so the
  CRDs' rules keep to standard CEL).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from typing import Any

import celpy
import re2
from jsonschema import Draft4Validator

# JSONSchemaProps fields (apiextensions.k8s.io/v1).
SCHEMA_FIELDS = frozenset(
    {
        "id", "$schema", "$ref", "description", "type", "format", "title", "default", "maximum",
        "exclusiveMaximum", "minimum", "exclusiveMinimum", "maxLength", "minLength", "pattern",
        "maxItems", "minItems", "uniqueItems", "multipleOf", "enum", "maxProperties",
        "minProperties", "required", "items", "allOf", "oneOf", "anyOf", "not", "properties",
        "additionalProperties", "patternProperties", "dependencies", "additionalItems",
        "definitions", "externalDocs", "example", "nullable",
        "x-kubernetes-preserve-unknown-fields", "x-kubernetes-embedded-resource",
        "x-kubernetes-int-or-string", "x-kubernetes-list-map-keys", "x-kubernetes-list-type",
        "x-kubernetes-map-type", "x-kubernetes-validations",
    }
)  # fmt: skip
# specStandardValidatorV3.validate: "... is not supported".
UNSUPPORTED = ("id", "$ref", "definitions", "dependencies", "additionalItems", "patternProperties")
OPENAPI_TYPES = frozenset({"object", "array", "string", "integer", "number", "boolean"})
JUNCTORS = ("allOf", "anyOf", "oneOf", "not")
# allowedFieldsAtRootSchema, when the status subresource is enabled.
ROOT_FIELDS_WITH_STATUS = frozenset(
    {
        "description", "type", "format", "title", "maximum", "exclusiveMaximum", "minimum",
        "exclusiveMinimum", "maxLength", "minLength", "pattern", "maxItems", "minItems",
        "uniqueItems", "multipleOf", "required", "items", "properties", "externalDocs", "example",
        "x-kubernetes-preserve-unknown-fields", "x-kubernetes-validations",
    }
)  # fmt: skip
VALIDATION_REASONS = frozenset(
    {"FieldValueInvalid", "FieldValueForbidden", "FieldValueRequired", "FieldValueDuplicate"}
)
PRINTER_COLUMN_TYPES = frozenset({"integer", "number", "string", "boolean", "date"})
PRINTER_COLUMN_FORMATS = frozenset(
    {"int32", "int64", "float", "double", "byte", "date", "date-time", "password"}
)
OBJECT_META_FIELDS = frozenset(
    {
        "name", "generateName", "namespace", "uid", "resourceVersion", "generation",
        "creationTimestamp", "deletionTimestamp", "labels", "annotations", "ownerReferences",
        "finalizers",
    }
)  # fmt: skip
# CEL identifiers that Kubernetes escapes as __name__ in rules (k8s.io/apiserver/pkg/cel).
CEL_RESERVED = frozenset(
    {
        "true", "false", "null", "in", "as", "break", "const", "continue", "else", "for",
        "function", "if", "import", "let", "loop", "package", "namespace", "return", "var",
        "void", "while",
    }
)  # fmt: skip
CEL_MACROS = ("all", "exists", "exists_one", "map", "filter")
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
GATEWAY_POLICY_LABEL = "gateway.networking.k8s.io/policy"

_ROOT, _ITEMS, _FIELD = "root", "items", "field"


def _typed(schema: dict[str, Any]) -> bool:
    return bool(
        schema.get("type")
        or schema.get("x-kubernetes-int-or-string")
        or schema.get("x-kubernetes-preserve-unknown-fields")
    )


# --- the CRD ----------------------------------------------------------------------------


def structural_problems(schema: dict[str, Any], *, status_subresource: bool) -> list[str]:
    """Every reason the API server (and this project) would refuse this openAPIV3Schema."""
    problems: list[str] = []
    if schema.get("nullable"):
        problems.append("openAPIV3Schema.nullable: cannot be true at the root")
    if status_subresource:
        if schema.get("type") != "object":
            problems.append('openAPIV3Schema.type: only "object" is allowed at the root with status')
        extra = sorted(set(schema) - ROOT_FIELDS_WITH_STATUS)
        if extra:
            problems.append(f"openAPIV3Schema: {extra} not allowed at the root with the status subresource")
    _walk(schema, "openAPIV3Schema", _ROOT, problems)
    return problems


def _walk(s: Any, path: str, level: str, out: list[str]) -> None:
    if not isinstance(s, dict):
        out.append(f"{path}: must be a schema object")
        return
    unknown = sorted(set(s) - SCHEMA_FIELDS)
    if unknown:
        out.append(f"{path}: unknown schema fields {unknown}")
    for key in UNSUPPORTED:
        if key in s:
            out.append(f"{path}.{key}: {key} is not supported")
    if s.get("uniqueItems") is True:
        out.append(
            f"{path}.uniqueItems: cannot be set to true since the runtime complexity becomes quadratic"
        )
    kind = s.get("type")
    if kind == "null":
        out.append(f"{path}.type: type cannot be set to null")
    elif kind and kind not in OPENAPI_TYPES:
        out.append(f"{path}.type: unsupported type {kind!r}")
    if isinstance(s.get("items"), list):
        out.append(f"{path}.items: items must be a schema object and not an array")
    properties = s.get("properties") or {}
    additional = s.get("additionalProperties")
    if additional is not None:
        if properties and (additional is False or isinstance(additional, dict)):
            out.append(
                f"{path}.additionalProperties: additionalProperties and properties are mutual exclusive"
            )
        if additional is False:
            # Legal alone, but it closes an object: this project relies on pruning instead.
            out.append(f"{path}.additionalProperties: false is not used here (unknown fields are pruned)")
        if level == _ROOT:
            out.append(f"{path}.additionalProperties: must not be used at the root")
    preserve = s.get("x-kubernetes-preserve-unknown-fields")
    if preserve is False:
        out.append(f"{path}.x-kubernetes-preserve-unknown-fields: must be true or undefined")
    int_or_string = bool(s.get("x-kubernetes-int-or-string"))
    embedded = bool(s.get("x-kubernetes-embedded-resource"))
    if int_or_string and preserve:
        out.append(
            f"{path}.x-kubernetes-preserve-unknown-fields: "
            "must be false if x-kubernetes-int-or-string is true"
        )
    if int_or_string and embedded:
        out.append(
            f"{path}.x-kubernetes-embedded-resource: must be false if x-kubernetes-int-or-string is true"
        )
    if embedded and kind != "object":
        out.append(f"{path}.type: must be object if x-kubernetes-embedded-resource is true")
    if embedded and not preserve and not properties:
        out.append(f"{path}.properties: must not be empty if x-kubernetes-embedded-resource is true")
    if not _typed(s) and not embedded:
        where = {
            _ROOT: "at the root",
            _ITEMS: "for specified array items",
            _FIELD: "for specified object fields",
        }
        out.append(f"{path}.type: must not be empty {where[level]}")
    if level == _ROOT and kind and kind != "object":
        out.append(f"{path}.type: must be object at the root")
    if kind == "array" and s.get("items") is None:
        out.append(f"{path}.items: must be specified")
    if "pattern" in s:
        try:
            re2.compile(s["pattern"])  # Go's regexp is RE2
        except re2.error as error:
            out.append(f"{path}.pattern: must be a valid regular expression: {error}")
    if level == _ROOT or embedded:
        for name in ("kind", "apiVersion"):
            if name in properties and properties[name].get("type") != "string":
                out.append(f"{path}.properties.{name}.type: must be string")
        if "metadata" in properties:
            meta = properties["metadata"]
            if meta.get("type") != "object":
                out.append(f"{path}.properties.metadata.type: must be object")
            if level == _ROOT and (
                set(meta) - {"type", "properties"}
                or set(meta.get("properties") or {}) - {"name", "generateName"}
            ):
                out.append(
                    f"{path}.properties.metadata: must not specify anything other than name and generateName"
                )
    _list_and_map_types(s, path, out)
    _validation_rules(s, path, out)
    for junctor in JUNCTORS:
        if junctor in s:
            _junctor(s, s[junctor], f"{path}.{junctor}", int_or_string, out)
    if "default" in s and level == _ROOT:
        out.append(f"{path}.default: must not be set at the root")
    for name, child in properties.items():
        if level == _ROOT and name == "metadata":
            continue
        _walk(child, f"{path}.properties.{name}", _FIELD, out)
    if isinstance(additional, dict):
        _walk(additional, f"{path}.additionalProperties", _FIELD, out)
    if isinstance(s.get("items"), dict):
        _walk(s["items"], f"{path}.items", _ITEMS, out)


def _list_and_map_types(s: dict[str, Any], path: str, out: list[str]) -> None:
    map_type = s.get("x-kubernetes-map-type")
    if map_type is not None:
        if s.get("type") != "object":
            out.append(f"{path}.type: must be object if x-kubernetes-map-type is specified")
        if map_type not in ("atomic", "granular"):
            out.append(f"{path}.x-kubernetes-map-type: unsupported {map_type!r}")
    list_type = s.get("x-kubernetes-list-type")
    keys = s.get("x-kubernetes-list-map-keys") or []
    if list_type is not None:
        if s.get("type") != "array":
            out.append(f"{path}.type: must be array if x-kubernetes-list-type is specified")
        if list_type not in ("atomic", "set", "map"):
            out.append(f"{path}.x-kubernetes-list-type: unsupported {list_type!r}")
    if keys and list_type != "map":
        out.append(f"{path}.x-kubernetes-list-type: must be map if x-kubernetes-list-map-keys is non-empty")
    items = s.get("items") if isinstance(s.get("items"), dict) else None
    if list_type == "set" and items is not None:
        if items.get("type") == "object" and items.get("x-kubernetes-map-type") != "atomic":
            out.append(
                f"{path}.items.x-kubernetes-map-type: "
                "must be atomic as item of a list with x-kubernetes-list-type=set"
            )
        if items.get("type") == "array" and items.get("x-kubernetes-list-type", "atomic") != "atomic":
            out.append(
                f"{path}.items.x-kubernetes-list-type: "
                "must be atomic as item of a list with x-kubernetes-list-type=set"
            )
    if list_type != "map":
        return
    if not keys:
        out.append(f"{path}.x-kubernetes-list-map-keys: must not be empty if x-kubernetes-list-type is map")
    if items is None:
        out.append(f"{path}.items: must have a schema if x-kubernetes-list-type is map")
        return
    if items.get("type") != "object":
        out.append(f"{path}.items.type: must be object if parent array's x-kubernetes-list-type is map")
        return
    if items.get("nullable"):
        out.append(f"{path}.items.nullable: cannot be nullable when x-kubernetes-list-type is map")
    if len(set(keys)) != len(keys):
        out.append(f"{path}.x-kubernetes-list-map-keys: must not contain duplicate entries")
    item_properties = items.get("properties") or {}
    for key in keys:
        prop = item_properties.get(key)
        if prop is None:
            out.append(
                f"{path}.x-kubernetes-list-map-keys: entries must all be names of item properties ({key})"
            )
            continue
        if prop.get("type") in ("array", "object"):
            out.append(
                f"{path}.items.properties.{key}.type: "
                "must be a scalar type if parent array's x-kubernetes-list-type is map"
            )
        if key not in (items.get("required") or []) and "default" not in prop:
            out.append(
                f"{path}.items.properties.{key}: is a list-map key, so it must have a default or be required"
            )
        if prop.get("nullable"):
            out.append(f"{path}.items.properties.{key}.nullable: a list-map key cannot be nullable")


def _validation_rules(s: dict[str, Any], path: str, out: list[str]) -> None:
    for i, rule in enumerate(s.get("x-kubernetes-validations") or []):
        where = f"{path}.x-kubernetes-validations[{i}]"
        text = str(rule.get("rule", "")).strip()
        message = rule.get("message")
        if not text:
            out.append(f"{where}.rule: rule is not specified")
            continue
        if message is not None and not str(message).strip():
            out.append(f"{where}.message: message must be non-empty if specified")
        if message and re.search(r"[\n\r]", str(message)):
            out.append(f"{where}.message: message must not contain line breaks")
        if re.search(r"[\n\r]", text) and not message:
            out.append(f"{where}.message: message must be specified if rule contains line breaks")
        if "reason" in rule and rule["reason"] not in VALIDATION_REASONS:
            out.append(f"{where}.reason: unsupported {rule['reason']!r}")
        if "fieldPath" in rule and resolve_field_path(s, rule["fieldPath"]) is None:
            out.append(f"{where}.fieldPath: fieldPath must be a valid path ({rule['fieldPath']})")
        if "oldSelf" in text:
            out.append(f"{where}.rule: transition rules are not used here")
        try:
            _cel_env().compile(text)
        except celpy.CELParseError as error:
            out.append(f"{where}.rule: does not compile: {error}")
            continue
        out.extend(f"{where}.rule: {problem}" for problem in cel_field_problems(text, s))


def _junctor(parent: dict[str, Any], value: Any, path: str, int_or_string: bool, out: list[str]) -> None:
    """allOf/anyOf/oneOf/not hold value validations only (NestedValueValidation). The one
    exception kept here: `anyOf: [{type: integer}, {type: string}]` beside
    x-kubernetes-int-or-string (the `allOf: [{anyOf: ...}]` form is not used by these CRDs)."""
    nested = value if isinstance(value, list) else [value]
    for i, v in enumerate(nested):
        where = f"{path}[{i}]" if isinstance(value, list) else path
        int_or_string_branch = (
            int_or_string and path.endswith(".anyOf") and v in ({"type": "integer"}, {"type": "string"})
        )
        _nested_value_validation(v, parent, where, out, allow_type=int_or_string_branch)


def _nested_value_validation(
    v: Any, structural: dict[str, Any], path: str, out: list[str], *, allow_type: bool = False
) -> None:
    if not isinstance(v, dict):
        out.append(f"{path}: must be a schema object")
        return
    if "type" in v and not allow_type:
        out.append(f"{path}.type: must be empty to be structural")
    for key in ("additionalProperties", "default", "title", "description", "externalDocs"):
        if key in v:
            out.append(f"{path}.{key}: must be undefined to be structural")
    if v.get("nullable"):
        out.append(f"{path}.nullable: must be false to be structural")
    for key in v:
        if key.startswith("x-kubernetes-"):
            out.append(f"{path}.{key}: must be undefined to be structural")
    if "metadata" in (v.get("properties") or {}):
        out.append(f"{path}.properties.metadata: must not be specified in a nested context")
    # Completeness: whatever a value validation names must exist in the structural schema.
    for name, child in (v.get("properties") or {}).items():
        declared = (structural.get("properties") or {}).get(name)
        if declared is None:
            out.append(f"{path}.properties.{name}: must be specified in the structural schema too")
            continue
        _nested_value_validation(child, declared, f"{path}.properties.{name}", out)
    if "items" in v:
        if not isinstance(structural.get("items"), dict):
            out.append(f"{path}.items: must be specified in the structural schema too")
        else:
            _nested_value_validation(v["items"], structural["items"], f"{path}.items", out)
    for junctor in JUNCTORS:
        if junctor in v:
            for i, inner in enumerate(v[junctor] if isinstance(v[junctor], list) else [v[junctor]]):
                _nested_value_validation(inner, structural, f"{path}.{junctor}[{i}]", out)


def bound_problems(schema: dict[str, Any], path: str = "openAPIV3Schema") -> list[str]:
    """This project's rule: every array, map and string is bounded, so that CEL cost
    estimation (which multiplies by maxItems/maxProperties/maxLength) stays finite and
    so that no one object can be made arbitrarily large field by field."""
    out: list[str] = []

    def visit(s: dict[str, Any], where: str, skip: bool) -> None:
        if skip or (s.get("x-kubernetes-preserve-unknown-fields") and not s.get("properties")):
            return
        kind = s.get("type")
        if kind == "array" and "maxItems" not in s:
            out.append(f"{where}: an array needs maxItems")
        if kind == "object" and isinstance(s.get("additionalProperties"), dict) and "maxProperties" not in s:
            out.append(f"{where}: a map needs maxProperties")
        if (kind == "string" or s.get("x-kubernetes-int-or-string")) and not (
            "maxLength" in s or "enum" in s
        ):
            out.append(f"{where}: a string needs maxLength or enum")
        for name, child in (s.get("properties") or {}).items():
            # The API server itself checks apiVersion, kind and metadata at the root.
            at_root = where == path and name in ("apiVersion", "kind", "metadata")
            visit(child, f"{where}.properties.{name}", at_root)
        if isinstance(s.get("additionalProperties"), dict):
            visit(s["additionalProperties"], f"{where}.additionalProperties", False)
        if isinstance(s.get("items"), dict):
            visit(s["items"], f"{where}.items", False)

    visit(schema, path, False)
    return out


def _schema_child(s: dict[str, Any] | None, name: str) -> dict[str, Any] | None:
    """The schema of field `name` of an object schema, as CEL and field paths see it."""
    if s is None:
        return None
    if name in (s.get("properties") or {}):
        return s["properties"][name]
    if isinstance(s.get("additionalProperties"), dict):
        return s["additionalProperties"]
    return None


def resolve_field_path(s: dict[str, Any], field_path: str) -> dict[str, Any] | None:
    """A rule's fieldPath (`.a.b`, relative to the rule's node), or None if it names nothing."""
    if not field_path.startswith("."):
        return None
    node: dict[str, Any] | None = s
    for part in field_path[1:].split("."):
        node = _schema_child(node, part)
        if node is None:
            return None
    return node


def cel_field_problems(rule: str, s: dict[str, Any]) -> list[str]:
    """Fields a rule names that its schema does not declare: the API server's CEL type
    check refuses those ("undefined field"), and cel-python does no type check."""
    problems: list[str] = []
    variables: dict[str, dict[str, Any] | None] = {"self": s}
    # `self.path.all(x, ...)`: x is an item of the list (or a key of the map) at self.path.
    macros = "|".join(CEL_MACROS)
    for match in re.finditer(rf"\bself((?:\.\w+)*)\.(?:{macros})\((\w+)\s*,", rule):
        target = resolve_field_path(s, match.group(1)) if match.group(1) else s
        if target is not None and target.get("type") == "array":
            variables[match.group(2)] = target.get("items")
        else:
            variables[match.group(2)] = None  # a map key or scalar: no fields
    for name, schema in variables.items():
        for match in re.finditer(rf"\b{re.escape(name)}((?:\.\w+)+)", rule):
            node = schema
            for part in match.group(1)[1:].split("."):
                if part in CEL_MACROS or part in ("size", "matches", "contains", "startsWith", "endsWith"):
                    break
                if part in CEL_RESERVED:
                    problems.append(f"field {part!r} is a CEL reserved word: write __{part}__")
                if node is None or node.get("x-kubernetes-int-or-string"):
                    problems.append(f"{name}{match.group(1)}: {part} is not a field of a declared object")
                    break
                child = _schema_child(node, part)
                if child is None:
                    problems.append(f"{name}{match.group(1)}: undefined field {part!r}")
                    break
                node = child
    return problems


def printer_column_problems(columns: list[dict[str, Any]], schema: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for i, col in enumerate(columns):
        where = f"additionalPrinterColumns[{i}]"
        if not col.get("name"):
            out.append(f"{where}.name: required")
        if col.get("type") not in PRINTER_COLUMN_TYPES:
            out.append(f"{where}.type: must be one of {sorted(PRINTER_COLUMN_TYPES)}")
        if "format" in col and col["format"] not in PRINTER_COLUMN_FORMATS:
            out.append(f"{where}.format: must be one of {sorted(PRINTER_COLUMN_FORMATS)}")
        json_path = col.get("jsonPath", "")
        if not json_path.startswith("."):
            out.append(f"{where}.jsonPath: must be a simple json path starting with .")
            continue
        node, problem = resolve_json_path(schema, json_path)
        if problem:
            out.append(f"{where}.jsonPath {json_path}: {problem}")
        elif col.get("type") == "date" and node != "date" and (node or {}).get("format") != "date-time":
            out.append(f"{where}.jsonPath {json_path}: a date column needs a date-time field")
    return out


_JSON_PATH_TOKEN = re.compile(r"""\.(\w+)|\[(\d+)\]|\[\?\(@\.(\w+)\s*==\s*(?:"[^"]*"|'[^']*')\)\]""")


def resolve_json_path(schema: dict[str, Any], json_path: str) -> tuple[Any, str | None]:
    """Walks a printer column's JSONPath (`.a.b`, `[0]`, `[?(@.type=="X")]`) through the schema."""
    node: Any = schema
    position = 0
    names: list[str] = []
    while position < len(json_path):
        match = _JSON_PATH_TOKEN.match(json_path, position)
        if match is None:
            return None, f"cannot parse at {json_path[position:]!r}"
        position = match.end()
        field, _index, filter_field = match.groups()
        if names == ["metadata"] and field:
            if field not in OBJECT_META_FIELDS:
                return None, f"metadata has no field {field!r}"
            node = "date" if field in ("creationTimestamp", "deletionTimestamp") else {"type": "string"}
            names.append(field)
            continue
        if field:
            if field == "metadata" and not names:
                names.append(field)
                continue
            child = _schema_child(node if isinstance(node, dict) else None, field)
            if child is None:
                return None, f"no field {field!r}"
            node = child
            names.append(field)
        else:
            if not isinstance(node, dict) or node.get("type") != "array":
                return None, "indexes something that is not an array"
            node = node.get("items") or {}
            if filter_field and filter_field not in (node.get("properties") or {}):
                return None, f"filters on {filter_field!r}, which the items do not have"
    return node, None


def crd_problems(crd: dict[str, Any]) -> list[str]:
    out: list[str] = []
    if crd.get("apiVersion") != "apiextensions.k8s.io/v1" or crd.get("kind") != "CustomResourceDefinition":
        out.append("must be an apiextensions.k8s.io/v1 CustomResourceDefinition")
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    group = spec.get("group", "")
    if crd.get("metadata", {}).get("name") != f"{names.get('plural')}.{group}":
        out.append('metadata.name: must be spec.names.plural+"."+spec.group')
    if not DNS1123_SUBDOMAIN.match(group) or "." not in group:
        out.append("spec.group: must be a DNS subdomain with at least one dot")
    if spec.get("scope") not in ("Namespaced", "Cluster"):
        out.append("spec.scope: must be Namespaced or Cluster")
    if spec.get("preserveUnknownFields"):
        out.append("spec.preserveUnknownFields: must be false in apiextensions.k8s.io/v1")
    for key in ("plural", "singular", "kind", "listKind"):
        if not names.get(key):
            out.append(f"spec.names.{key}: required")
    for key in ("plural", "singular"):
        if names.get(key) and not DNS1035_LABEL.match(names[key]):
            out.append(f"spec.names.{key}: must be a DNS-1035 label")
    for key in ("kind", "listKind"):
        if names.get(key) and not DNS1035_LABEL.match(names[key].lower()):
            out.append(f"spec.names.{key}: may have mixed case, but should otherwise be a DNS-1035 label")
    if names.get("kind") and names.get("kind") == names.get("listKind"):
        out.append("spec.names.listKind: kind and listKind may not be the same")
    for key in ("shortNames", "categories"):
        for value in names.get(key) or []:
            if not DNS1035_LABEL.match(value):
                out.append(f"spec.names.{key}: {value!r} must be a DNS-1035 label")
    versions = spec.get("versions") or []
    if [v.get("storage") for v in versions].count(True) != 1:
        out.append("spec.versions: must have exactly one version marked as storage version")
    if len({v.get("name") for v in versions}) != len(versions):
        out.append("spec.versions: must contain unique version names")
    for v in versions:
        where = f"spec.versions[{v.get('name')}]"
        if not DNS1035_LABEL.match(str(v.get("name"))):
            out.append(f"{where}.name: must be a DNS-1035 label")
        schema = (v.get("schema") or {}).get("openAPIV3Schema")
        if schema is None:
            out.append(f"{where}.schema.openAPIV3Schema: required in apiextensions.k8s.io/v1")
            continue
        status_enabled = "status" in (v.get("subresources") or {})
        out += [f"{where}.schema.{p}" for p in structural_problems(schema, status_subresource=status_enabled)]
        out += [f"{where}.schema.{p}" for p in bound_problems(schema)]
        out += [
            f"{where}.{p}" for p in printer_column_problems(v.get("additionalPrinterColumns") or [], schema)
        ]
        out += [f"{where}.schema.{p}" for p in default_problems(schema)]
        has_status = "status" in (schema.get("properties") or {})
        if has_status != status_enabled:
            out.append(f"{where}: a status schema and the status subresource go together")
    return out


def default_problems(schema: dict[str, Any], path: str = "openAPIV3Schema") -> list[str]:
    """Defaults must validate against their own schema (the API server prunes and validates them)."""
    out: list[str] = []
    for where, node in _schema_nodes(schema, path):
        if "default" in node:
            errors = list(Draft4Validator(to_jsonschema(node)).iter_errors(node["default"]))
            out += [f"{where}.default: {e.message}" for e in errors]
    return out


def _schema_nodes(s: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, s
    for name, child in (s.get("properties") or {}).items():
        yield from _schema_nodes(child, f"{path}.properties.{name}")
    if isinstance(s.get("additionalProperties"), dict):
        yield from _schema_nodes(s["additionalProperties"], f"{path}.additionalProperties")
    if isinstance(s.get("items"), dict):
        yield from _schema_nodes(s["items"], f"{path}.items")


def to_jsonschema(s: Any) -> Any:
    """The OpenAPI validation the API server runs, as a draft-4 JSON schema."""
    if isinstance(s, list):
        return [to_jsonschema(v) for v in s]
    if not isinstance(s, dict):
        return s
    out = {k: to_jsonschema(v) for k, v in s.items() if not k.startswith("x-kubernetes-") and k != "default"}
    if s.get("x-kubernetes-int-or-string"):
        out["type"] = ["integer", "string"]  # as ConvertJSONSchemaPropsWithPostProcess does
    return out


# --- custom resources -------------------------------------------------------------------

_ENV: celpy.Environment | None = None


def _cel_env() -> celpy.Environment:
    global _ENV
    if _ENV is None:
        _ENV = celpy.Environment()
    return _ENV


class ResourceValidator:
    """Create-time handling of one kind's objects: prune, default, validate, run CEL."""

    def __init__(self, crd: dict[str, Any]) -> None:
        (version,) = [v for v in crd["spec"]["versions"] if v.get("storage")]
        self.schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
        self.api_version = f"{crd['spec']['group']}/{version['name']}"
        self.kind = crd["spec"]["names"]["kind"]
        self._openapi = Draft4Validator(to_jsonschema(self.schema))
        self._programs: dict[str, Any] = {}

    def problems(self, document: dict[str, Any], *, strict: bool = True) -> list[str]:
        """Why the API server would refuse `document`; [] if it would store it.

        strict: unknown fields are errors, as with kubectl's default `--validate=strict`
        (fieldValidation=Strict); otherwise they are pruned silently (Ignore)."""
        doc = copy.deepcopy(document)
        out: list[str] = []
        if doc.get("apiVersion") != self.api_version or doc.get("kind") != self.kind:
            out.append(f"expected {self.api_version} {self.kind}")
        if not (doc.get("metadata") or {}).get("name"):
            out.append("metadata.name: Required value")
        unknown: list[str] = []
        self._prune(doc, self.schema, "", unknown, root=True)
        if strict:
            out += [f"{path}: unknown field" for path in unknown]
        self._default(doc, self.schema)
        out += [f"{_path(e.absolute_path)}: {e.message}" for e in self._openapi.iter_errors(doc)]
        out += self._list_map_duplicates(doc, self.schema, "")
        out += self._cel(doc, self.schema, "")
        return out

    def admitted(self, document: dict[str, Any], *, strict: bool = True) -> dict[str, Any]:
        """The object as stored (pruned and defaulted)."""
        doc = copy.deepcopy(document)
        self._prune(doc, self.schema, "", [], root=True)
        self._default(doc, self.schema)
        return doc

    def _prune(
        self, value: Any, s: dict[str, Any], path: str, unknown: list[str], *, root: bool = False
    ) -> None:
        if isinstance(value, dict) and (root or s.get("type") == "object"):
            properties = s.get("properties") or {}
            additional = s.get("additionalProperties")
            for key in list(value):
                if root and key in ("apiVersion", "kind", "metadata"):
                    continue
                child = properties.get(key)
                if child is None and isinstance(additional, dict):
                    child = additional
                if child is None:
                    if s.get("x-kubernetes-preserve-unknown-fields") or additional is True:
                        continue
                    unknown.append(f"{path}.{key}".lstrip("."))
                    del value[key]
                    continue
                self._prune(value[key], child, f"{path}.{key}", unknown)
        elif isinstance(value, list) and isinstance(s.get("items"), dict):
            for i, item in enumerate(value):
                self._prune(item, s["items"], f"{path}[{i}]", unknown)

    def _default(self, value: Any, s: dict[str, Any]) -> None:
        if isinstance(value, dict):
            for key, child in (s.get("properties") or {}).items():
                if key not in value and "default" in child:
                    value[key] = copy.deepcopy(child["default"])
                if key in value:
                    self._default(value[key], child)
            if isinstance(s.get("additionalProperties"), dict):
                for item in value.values():
                    self._default(item, s["additionalProperties"])
        elif isinstance(value, list) and isinstance(s.get("items"), dict):
            for item in value:
                self._default(item, s["items"])

    def _list_map_duplicates(self, value: Any, s: dict[str, Any], path: str) -> list[str]:
        out: list[str] = []
        for where, node, schema in _walk_values(value, s, path):
            if not isinstance(node, list):
                continue
            list_type = schema.get("x-kubernetes-list-type")
            seen: set[Any] = set()
            for i, item in enumerate(node):
                if list_type == "map" and isinstance(item, dict):
                    key: Any = tuple(repr(item.get(k)) for k in schema["x-kubernetes-list-map-keys"])
                elif list_type == "set":
                    key = repr(item)
                else:
                    continue
                if key in seen:
                    out.append(f"{where}[{i}]: Duplicate value: {key}")
                seen.add(key)
        return out

    def _cel(self, value: Any, s: dict[str, Any], path: str) -> list[str]:
        out: list[str] = []
        for where, node, schema in _walk_values(value, s, path):
            for rule in schema.get("x-kubernetes-validations") or []:
                ok, detail = self.evaluate(rule["rule"], node)
                if not ok:
                    field = where + (rule.get("fieldPath") or "")
                    out.append(f"{field.lstrip('.') or '(root)'}: {rule.get('message') or detail} [{detail}]")
        return out

    def evaluate(self, rule: str, value: Any) -> tuple[bool, str]:
        program = self._programs.get(rule)
        if program is None:
            env = _cel_env()
            program = self._programs[rule] = env.program(env.compile(rule))
        try:
            result = program.evaluate({"self": celpy.json_to_cel(value)})
        except Exception as error:  # cel-python raises some evaluation errors
            return False, f"evaluation error: {error}"
        if isinstance(result, celpy.CELEvalError):
            return False, f"evaluation error: {result}"
        if isinstance(result, celpy.celtypes.BoolType):
            return bool(result), f"failed rule: {rule}"
        return False, f"rule did not return a bool: {result!r}"


def _walk_values(value: Any, s: dict[str, Any], path: str) -> Iterator[tuple[str, Any, dict[str, Any]]]:
    """Each present value with the schema node that applies to it, outermost first."""
    yield path, value, s
    if isinstance(value, dict):
        properties = s.get("properties") or {}
        additional = s.get("additionalProperties")
        for key, item in value.items():
            child = properties.get(key) or (additional if isinstance(additional, dict) else None)
            if child is not None:
                yield from _walk_values(item, child, f"{path}.{key}")
    elif isinstance(value, list) and isinstance(s.get("items"), dict):
        for i, item in enumerate(value):
            yield from _walk_values(item, s["items"], f"{path}[{i}]")


def _path(parts: Any) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text.lstrip(".") or "(root)"


def offline_schema_problems(doc: dict[str, Any]) -> list[str]:
    """What the offline Kubernetes schemas (kubernetes-validate, strict: an unknown or
    misspelt field anywhere is an error, as `kubectl --validate=strict`) say of a document."""
    import kubernetes_validate

    try:
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)
    except kubernetes_validate.ValidationError as error:
        return [f"{'.'.join(str(p) for p in error.path)}: {error.message}"]
    return []
