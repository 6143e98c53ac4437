"""The route table and the policy of ``GATEWAY_CONFIG`` (issue 20): which service a path goes
to and whether a request may go there. :func:`load_policy` reads and validates the file,
:class:`Policy` is the compiled, immutable table the proxy decides with."""

from gateway.policy.loader import (
    DEFAULT_MAX_BYTES,
    PolicyFileError,
    load_policy,
    parse_policy,
    read_policy_file,
)
from gateway.policy.table import Caller, Decision, Policy, Rule, ServiceConfig

__all__ = [
    "DEFAULT_MAX_BYTES",
    "Caller",
    "Decision",
    "Policy",
    "PolicyFileError",
    "Rule",
    "ServiceConfig",
    "load_policy",
    "parse_policy",
    "read_policy_file",
]
