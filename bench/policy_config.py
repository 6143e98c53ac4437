"""A large GATEWAY_CONFIG for the benchmarks (issue 25, "cost that does not grow"): 100 services,
1,000 rules, every service on the same upstream, and one rule that allows the benchmarks'
``GET /api/v1/me``.

The rules are shaped like a real file's, not like the best case for the tries: each service has
allow and deny rules on its own prefix (literal segments, ``*`` and trailing ``/**``), by method,
with roles, users and public ones, and a few rules without ``methods`` or ``paths`` at all (they
sit in the trie every request walks). ``python bench/policy_config.py URL`` prints one.
"""

from __future__ import annotations

import sys

SERVICES = 100
RULES = 1000


def large_config(upstream: str, *, services: int = SERVICES, rules: int = RULES) -> str:
    out = [
        "version = 1",
        'identity = "backend"',
        "",
        "[services.backend]",
        f'url = "{upstream}"',
        'audience = "tokengate-backend"',
    ]
    for i in range(1, services):
        out += ["", f"[services.svc{i}]", f'url = "{upstream}"', f'audience = "tokengate-svc{i}"']
    for i in range(1, services):
        out += ["", "[[route]]", f'prefix = "/s{i}"', f'service = "svc{i}"']
    out += ["", "[[route]]", 'prefix = "/"', 'service = "backend"']
    # the one the benchmark's GET /api/v1/me passes by
    out += ["", "[[rule]]", 'name = "me"', 'effect = "allow"', 'methods = ["GET"]']
    out += ['paths = ["/me"]', "authenticated = true"]
    shapes = [
        (
            'effect = "allow"',
            'methods = ["GET"]',
            'paths = ["/s{i}/r{j}", "/s{i}/r{j}/**"]',
            "authenticated = true",
        ),
        (
            'effect = "allow"',
            'methods = ["POST", "PUT"]',
            'paths = ["/s{i}/r{j}/*"]',
            'roles_any = ["editor", "admin"]',
        ),
        (
            'effect = "allow"',
            'methods = ["GET"]',
            'paths = ["/s{i}/public{j}/**"]',
            "public = true",
        ),
        ('effect = "deny"', 'methods = ["DELETE"]', 'paths = ["/s{i}/r{j}/locked/**"]', ""),
        (
            'effect = "allow"',
            'methods = ["PATCH"]',
            'paths = ["/s{i}/*/item{j}"]',
            'users = ["00000000-0000-0000-0000-00000000{j:04d}"]',
        ),
    ]
    made = 1
    i = j = 0
    while made < rules:
        i = i % (services - 1) + 1
        j += 1
        shape = shapes[made % len(shapes)]
        out += ["", "[[rule]]", f'name = "r{made}"']
        out += [line.format(i=i, j=j) for line in shape if line]
        made += 1
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(large_config(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8001"), end="")
