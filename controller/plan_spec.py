"""A small declarative description of the plan format, and the two things derived from it.

The same ``Spec`` tree drives the strict validator (``validate``) and the published JSON
Schema (``json_schema``), so editors and ``loadgate plan validate`` cannot disagree about
what a plan may contain.  Validation walks plain Python values (from YAML or from a dict
shipped over gRPC) with a ``marks`` map from key path to (line, column), collects every
problem it finds instead of stopping at the first, and returns the canonical values:
durations in seconds, percents as numbers of percent, sizes in bytes.
"""
import difflib
import enum
import re
from dataclasses import dataclass

from loadgate.controller import plan_units


class Kind(enum.Enum):
    STRING = "string"
    INTEGER = "integer"
    NUMBER = "number"
    BOOLEAN = "boolean"
    DURATION = "duration"
    PERCENT = "percent"
    SIZE = "size"
    ENUM = "enum"
    LIST = "list"
    STRUCT = "struct"
    MAP = "map"


@dataclass(frozen=True)
class Spec:
    kind: Kind
    doc: str = ""
    minimum: float = None
    maximum: float = None
    exclusive_minimum: bool = False
    choices: tuple = ()
    fields: tuple = ()
    item: "Spec" = None
    key: str = ""
    pattern: str = None
    min_items: int = 0


@dataclass(frozen=True)
class Field:
    name: str
    spec: Spec
    required: bool = False


@dataclass
class Issue:
    """One problem found while validating, located by key path (tuple of keys and indexes)."""

    path: tuple
    message: str


# Keys of MAP specs are checked by one of these (the key's canonical form, or ValueError).
KEY_CHECKS = {
    "percentile": plan_units.parse_percentile_key,
    "header": lambda key: _header_name(key),
}
KEY_PATTERNS = {
    "percentile": r"^p(\d+(\.\d+)?)$",
    "header": r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$",
}


def _header_name(key):
    if not isinstance(key, str) or not re.match(KEY_PATTERNS["header"], key):
        raise ValueError(f"{key!r} is not a valid HTTP header name")
    return key


def string(doc="", pattern=None):
    return Spec(Kind.STRING, doc, pattern=pattern)


def integer(doc="", minimum=None, maximum=None):
    return Spec(Kind.INTEGER, doc, minimum=minimum, maximum=maximum)


def number(doc="", minimum=None, maximum=None, exclusive_minimum=False):
    return Spec(Kind.NUMBER, doc, minimum=minimum, maximum=maximum,
                exclusive_minimum=exclusive_minimum)


def boolean(doc=""):
    return Spec(Kind.BOOLEAN, doc)


def duration(doc="", positive=False):
    return Spec(Kind.DURATION, doc, minimum=0, exclusive_minimum=positive)


def percent(doc="", positive=False):
    return Spec(Kind.PERCENT, doc, minimum=0, maximum=100, exclusive_minimum=positive)


def size(doc=""):
    return Spec(Kind.SIZE, doc)


def choice(enum_type, doc=""):
    return Spec(Kind.ENUM, doc, choices=tuple(member.value for member in enum_type))


def listof(item, doc="", min_items=0):
    return Spec(Kind.LIST, doc, item=item, min_items=min_items)


def struct(doc, *fields):
    return Spec(Kind.STRUCT, doc, fields=tuple(fields))


def mapping(key, value, doc=""):
    return Spec(Kind.MAP, doc, item=value, key=key)


def _type_name(value):
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_bounds(spec, value, path, issues, shown):
    if spec.minimum is not None:
        if value < spec.minimum or (spec.exclusive_minimum and value == spec.minimum):
            relation = "greater than" if spec.exclusive_minimum else "at least"
            issues.append(Issue(path, f"must be {relation} {spec.minimum:g}, got {shown}"))
            return False
    if spec.maximum is not None and value > spec.maximum:
        issues.append(Issue(path, f"must be at most {spec.maximum:g}, got {shown}"))
        return False
    return True


def validate(value, spec, path=(), issues=None):
    """The canonical form of value under spec; problems are appended to issues.

    Returns None where the value is unusable, so one bad field never hides the others.
    """
    issues = [] if issues is None else issues
    kind = spec.kind
    if kind is Kind.STRUCT:
        return _validate_struct(value, spec, path, issues)
    if kind is Kind.LIST:
        if not isinstance(value, list):
            issues.append(Issue(path, f"expected a list, got {_type_name(value)}"))
            return None
        if len(value) < spec.min_items:
            issues.append(Issue(path, f"needs at least {spec.min_items} item(s)"))
        return [validate(item, spec.item, path + (index,), issues)
                for index, item in enumerate(value)]
    if kind is Kind.MAP:
        if not isinstance(value, dict):
            issues.append(Issue(path, f"expected a mapping, got {_type_name(value)}"))
            return None
        result = {}
        for key, item in value.items():
            try:
                KEY_CHECKS[spec.key](key)
            except ValueError as exc:
                issues.append(Issue(path + (key,), str(exc)))
                continue
            result[key] = validate(item, spec.item, path + (key,), issues)
        return result
    return _validate_scalar(value, spec, path, issues)


def _validate_struct(value, spec, path, issues):
    if not isinstance(value, dict):
        issues.append(Issue(path, f"expected a mapping, got {_type_name(value)}"))
        return None
    known = {f.name: f for f in spec.fields}
    for key in value:
        if key not in known:
            hint = _closest(key, known)
            suffix = f" (did you mean {hint!r}?)" if hint else ""
            issues.append(Issue(path + (key,), f"unknown key {key!r}{suffix}"))
    result = {}
    for f in spec.fields:
        if f.name in value:
            result[f.name] = validate(value[f.name], f.spec, path + (f.name,), issues)
        elif f.required:
            issues.append(Issue(path + (f.name,), "is required"))
    return result


def _closest(key, known):
    matches = difflib.get_close_matches(str(key), list(known), n=1, cutoff=0.7)
    return matches[0] if matches else None


def _validate_scalar(value, spec, path, issues):
    kind = spec.kind
    if kind is Kind.STRING:
        if not isinstance(value, str):
            issues.append(Issue(path, f"expected a string, got {_type_name(value)}"))
            return None
        if spec.pattern:
            if not re.match(spec.pattern, value):
                issues.append(Issue(path, f"{value!r} does not match {spec.pattern}"))
                return None
        return value
    if kind is Kind.BOOLEAN:
        if not isinstance(value, bool):
            issues.append(Issue(path, f"expected true or false, got {_type_name(value)}"))
            return None
        return value
    if kind is Kind.ENUM:
        if value not in spec.choices:
            issues.append(Issue(path, f"expected one of {', '.join(map(str, spec.choices))}, "
                                      f"got {value!r}"))
            return None
        return value
    if kind in (Kind.INTEGER, Kind.NUMBER):
        wanted = int if kind is Kind.INTEGER else (int, float)
        if not _is_number(value) or not isinstance(value, wanted):
            what = "an integer" if kind is Kind.INTEGER else "a number"
            issues.append(Issue(path, f"expected {what}, got {_type_name(value)} {value!r}"))
            return None
        return value if _check_bounds(spec, value, path, issues, repr(value)) else None
    parse = {Kind.DURATION: plan_units.parse_duration, Kind.PERCENT: plan_units.parse_percent,
             Kind.SIZE: plan_units.parse_size}[kind]
    try:
        canonical = parse(value)
    except ValueError as exc:
        issues.append(Issue(path, str(exc)))
        return None
    return canonical if _check_bounds(spec, canonical, path, issues, repr(value)) else None


def json_schema(spec, title=None):
    """The JSON Schema (draft 2020-12) accepting exactly the documents validate() accepts,
    apart from cross-field rules, which a schema cannot express."""
    schema = _schema(spec)
    if title:
        schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": title,
                  **schema}
    return schema


def _with_doc(spec, schema):
    if spec.doc:
        schema["description"] = spec.doc
    return schema


def _bounded(spec, schema):
    if spec.minimum is not None:
        schema["exclusiveMinimum" if spec.exclusive_minimum else "minimum"] = spec.minimum
    if spec.maximum is not None:
        schema["maximum"] = spec.maximum
    return schema


def _schema(spec):
    kind = spec.kind
    if kind is Kind.STRUCT:
        schema = {"type": "object", "additionalProperties": False,
                  "properties": {f.name: _schema(f.spec) for f in spec.fields}}
        required = [f.name for f in spec.fields if f.required]
        if required:
            schema["required"] = required
    elif kind is Kind.LIST:
        schema = {"type": "array", "items": _schema(spec.item)}
        if spec.min_items:
            schema["minItems"] = spec.min_items
    elif kind is Kind.MAP:
        schema = {"type": "object", "additionalProperties": False,
                  "patternProperties": {KEY_PATTERNS[spec.key]: _schema(spec.item)}}
    elif kind is Kind.STRING:
        schema = {"type": "string"}
        if spec.pattern:
            schema["pattern"] = spec.pattern
    elif kind is Kind.BOOLEAN:
        schema = {"type": "boolean"}
    elif kind is Kind.ENUM:
        schema = {"enum": list(spec.choices)}
    elif kind in (Kind.INTEGER, Kind.NUMBER):
        schema = _bounded(spec, {"type": kind.value})
    else:
        pattern = {Kind.DURATION: plan_units.DURATION_PATTERN,
                   Kind.PERCENT: plan_units.PERCENT_PATTERN,
                   Kind.SIZE: plan_units.SIZE_PATTERN}[kind]
        schema = {"anyOf": [_bounded(spec, {"type": "number"}),
                            {"type": "string", "pattern": pattern}]}
        if kind is Kind.SIZE:
            schema["anyOf"][0]["minimum"] = 0
    return _with_doc(spec, schema)

