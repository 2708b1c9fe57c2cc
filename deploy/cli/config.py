"""`qfleet config`: print the resolved configuration, with each field's meaning."""
from __future__ import annotations

import argparse
import dataclasses

import yaml

from qfleet.common.config import BASELINE_SECTIONS, SECTIONS
from qfleet.common.config_loader import config_to_dict, load_config, load_sections
from qfleet.common.settings import describe_rule, field_docs


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML or TOML config file to resolve")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE", help="override a field")
    p.add_argument("--docs", action="store_true", help="list every field with its meaning and allowed range "
                   "(qfleet train's sections, then qfleet baseline's)")


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.set)
    if not args.docs:
        print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), end="")
        return 0
    baseline = load_sections(BASELINE_SECTIONS)
    for section, cls in {**SECTIONS, **BASELINE_SECTIONS}.items():
        docs = field_docs(cls)
        print(f"[{section}]" + ("    (qfleet baseline)" if section in BASELINE_SECTIONS else ""))
        for f in dataclasses.fields(cls):
            value = getattr(getattr(cfg, section) if section in SECTIONS else baseline[section], f.name)
            print(f"  {f.name} = {value!r}    ({describe_rule(f.metadata.get('rule', {}))})")
            print(f"      {docs.get(f.name, '')}")
        print()
    return 0
