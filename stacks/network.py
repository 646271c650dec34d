"""The services' network paths, from the service table: what the NetworkPolicies allow."""

from __future__ import annotations

from collections.abc import Iterable

from components.network_policy import ANYWHERE, MONITORING, PUBLIC_INTERNET, Flow, Pods
from stacks.services import DATA_ENDPOINTS, INTERNET, SERVICE_TABLE, SERVICES, Service


def service_flows(
    table: Iterable[Service] = SERVICE_TABLE, mail_port: int | None = None
) -> list[Flow]:
    """The paths the seed allows for the services: callers on 8080, PgPool on 5432, Redis on
    6379, Memcached on 11211, Prometheus scrapes, HTTPS out for the outside parties they call
    (the payment providers, the warehouse), and out to the mail relay's `mail_port` (the
    stack's smtp.port) for the mail senders."""
    flows: list[Flow] = []
    for svc in table:
        me = Pods(svc.namespace, svc.name)
        for caller in sorted(svc.callers):
            source = ANYWHERE if caller == INTERNET else Pods(SERVICES[caller].namespace, caller)
            flows.append(Flow(source, me, (svc.port,)))
        flows.append(Flow(MONITORING, me, (svc.metrics_port,)))
        for dependency in sorted(svc.needs):
            endpoint = DATA_ENDPOINTS[dependency]
            flows.append(Flow(me, Pods(endpoint.namespace, endpoint.app), (endpoint.port,)))
        if svc.outside:
            flows.append(Flow(me, PUBLIC_INTERNET, (443,)))
        if svc.sends_mail and mail_port is not None:
            flows.append(Flow(me, PUBLIC_INTERNET, (mail_port,)))
    return flows
