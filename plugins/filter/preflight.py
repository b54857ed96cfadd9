# Copyright: gpufleet maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Validation filters shared by the gpufleet.vllm roles (used by the preflight role)."""

from __future__ import annotations


def _describe(rule):
    if rule.get("allowed"):
        return rule["allowed"]
    kind = rule.get("type", "str")
    if kind == "port":
        return "a TCP port from 1 to 65535"
    if "choices" in rule:
        return "one of " + ", ".join(str(c) for c in rule["choices"])
    parts = ["an integer" if kind == "int" else "a number" if kind == "float" else "a " + kind]
    if "min" in rule:
        parts.append((">" if rule.get("min_exclusive") else ">=") + " " + str(rule["min"]))
    if "max" in rule:
        parts.append("<= " + str(rule["max"]))
    if rule.get("power_of_two"):
        parts.append("and a power of two")
    return " ".join(parts)


def _as_number(value, kind):
    """Convert inventory input (often a string) to int/float, or raise ValueError."""
    if isinstance(value, bool):
        raise ValueError("boolean")
    if kind == "int":
        if isinstance(value, float) and not value.is_integer():
            raise ValueError("fraction")
        return int(str(value).strip()) if not isinstance(value, (int, float)) else int(value)
    return float(value)


def check_value(value, rule):
    """Return None when value satisfies rule, else the text of what is allowed."""
    kind = rule.get("type", "str")
    try:
        if kind in ("int", "float", "port"):
            number = _as_number(value, "float" if kind == "float" else "int")
            low, high = (1, 65535) if kind == "port" else (rule.get("min"), rule.get("max"))
            if low is not None and (number < low or (rule.get("min_exclusive") and number == low)):
                raise ValueError("too small")
            if high is not None and number > high:
                raise ValueError("too large")
            if rule.get("power_of_two") and (number < 1 or number & (number - 1)):
                raise ValueError("not a power of two")
        elif kind == "bool":
            if not isinstance(value, bool):
                raise ValueError("not a boolean")
        else:
            value = str(value)
        if "choices" in rule and value not in rule["choices"]:
            raise ValueError("not a choice")
    except (TypeError, ValueError):
        return _describe(rule)
    return None


def setting_violations(settings, rules, required=None):
    """List a readable message for each missing or invalid setting."""
    messages = []
    for name in required or []:
        if settings.get(name) in (None, ""):
            messages.append("%s is required but not set" % name)
    for name in sorted(settings):
        if name in rules and settings[name] not in (None, ""):
            allowed = check_value(settings[name], rules[name])
            if allowed:
                messages.append("%s=%r is not allowed; use %s" % (name, settings[name], allowed))
    return messages


class FilterModule:
    def filters(self):
        return {
            "setting_violations": setting_violations,
        }
