"""gpu_fleet.common.template: ansible.builtin.template's lookup, without its deep copy of every
variable of the task.

    lookup('gpu_fleet.common.template', 'hf-train@.service.j2')

The builtin lookup deep-copies the task's variables (the host's facts, every role's variables) before
it adds the template's own (template_path, ansible_managed, ...) and renders; its source asks why
that copy is not "a chainmap with a sacrificial bottom layer". This lookup gives it exactly that: the
variables under an empty layer of their own, which its additions fill, so the text is the same and
nothing of the task's variables changes (ansible-core 2.19 hands a template copies of the lists and
dicts it reads, so a template's .append() changes neither the variables nor a later render: the
test checks it). The roles render their files' text on the controller on every run to compare it
with the host's (observe, then decide). On a ten-host no-change rerun of site.yml as shipped, the
copies were the workers' largest cost (py-spy), and this lookup took the rerun from 29.1 and 29.8 s
to 26.6 and 26.9 s, the controller's CPU from 38 to 33 s (docs/benchmarks.md).
"""

from __future__ import annotations

from collections import ChainMap

from ansible.plugins.loader import lookup_loader
from ansible.plugins.lookup import LookupBase

DOCUMENTATION = r"""
name: template
short_description: ansible.builtin.template's lookup without its deep copy of the task's variables
description:
  - Renders each template as C(lookup('ansible.builtin.template', ...)) does, with the same options,
    search path and template variables, over the task's variables under an empty layer of their own
    instead of a deep copy of them.
options:
  _terms:
    description: The templates, found as ansible.builtin.template's lookup finds them.
"""


class SacrificialLayer(ChainMap):
    """The variables, whose deep copy is a new empty layer over them. The copy is a plain ChainMap,
    the one mapping besides dicts that Ansible's templar takes as a whole set of variables."""

    def __deepcopy__(self, memo):
        return ChainMap({}, *self.maps[1:])


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        builtin = lookup_loader.get("ansible.builtin.template", loader=self._loader, templar=self._templar)
        return builtin.run(terms, SacrificialLayer({}, variables or {}), **kwargs)
