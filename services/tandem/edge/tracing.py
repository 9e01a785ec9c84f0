"""The spans of the calls and legs an edge runs, kept up from what their machines do.

One trace per call: the root span `call` and its child `ingress leg` on the owner edge,
`route.decide` on the router, one `egress leg` per attempt on the edge that ran it. The
machines know nothing of OpenTelemetry: their published events and `Finished` actions say
everything the spans show.
"""

from __future__ import annotations

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

from tandem import telemetry
from tandem.b2bua.actions import Finished
from tandem.pb import tandem_pb2 as pb
from tandem.telemetry import mask_number


def quality_attributes(quality: pb.MediaQuality) -> dict[str, str | int | float | bool]:
    """An anchored leg's RTP figures as span attributes (`media.*`)."""
    return {
        "media.rtpengine": quality.rtpengine,
        "media.protocol": quality.protocol,
        "media.packets_from": quality.packets_from,
        "media.packets_to": quality.packets_to,
        "media.packets_lost": quality.packets_lost,
        "media.loss_percent": quality.loss_percent,
        "media.jitter_ms": quality.jitter_ms,
        "media.mos": quality.mos,
        "media.lost": quality.lost,
    }


class CallTrace:
    """The root span of a call and its ingress leg; `headers` carry the context on NATS."""

    __slots__ = ("headers", "leg_span", "mask", "span", "trace_id")

    def __init__(
        self, tracer: Tracer, edge: str, call_id: str, trunk: str, sip_call_id: str, mask: bool
    ) -> None:
        self.mask = mask
        self.span = tracer.start_span(
            "call",
            kind=SpanKind.SERVER,
            attributes={
                "tandem.call_id": call_id,
                "tandem.edge": edge,
                "tandem.ingress_trunk": trunk,
                "sip.call_id": sip_call_id,
            },
        )
        self.leg_span = tracer.start_span(
            "ingress leg",
            context=trace.set_span_in_context(self.span),
            kind=SpanKind.SERVER,
            attributes={"tandem.trunk": trunk, "sip.call_id": sip_call_id},
        )
        self.trace_id = format(self.span.get_span_context().trace_id, "032x")
        self.headers = telemetry.inject({}, trace.set_span_in_context(self.span))

    def numbers(self, called: str, calling: str) -> None:
        self.span.set_attributes(
            {
                "sip.called": mask_number(called, self.mask),
                "sip.calling": mask_number(calling, self.mask),
            }
        )

    def event(self, event: pb.CallEvent) -> None:
        if event.kind == pb.CallEvent.ROUTED:
            self.span.set_attribute("tandem.route", event.route)
        elif event.kind == pb.CallEvent.LEG_FAILED:
            self.leg_span.add_event(
                "attempt failed",
                {"sip.status": event.status, "tandem.failover_reason": event.failure},
            )
        elif event.kind == pb.CallEvent.ENDED and event.media:
            self.span.set_attribute("tandem.media", event.media)
            for quality in event.quality:
                if not quality.leg_id:  # the caller's: the ingress leg's figures
                    self.leg_span.set_attributes(quality_attributes(quality))

    def finish(self, finished: Finished) -> None:
        for span in (self.leg_span, self.span):
            span.set_attribute("sip.status", finished.status)
        if finished.status >= 400:
            self.span.set_status(Status(StatusCode.ERROR, finished.reason))
        self.leg_span.end()
        self.span.end()


class LegTrace:
    """The span of one egress leg, a child of its call's span on whichever edge owns it."""

    __slots__ = ("anchored", "ended", "finished", "headers", "span")

    def __init__(
        self,
        tracer: Tracer,
        parent: otel_context.Context,
        edge: str,
        command: pb.LegCommand,
        sip_call_id: str,
        mask: bool,
    ) -> None:
        create = command.create
        target = create.target
        self.span: Span = tracer.start_span(
            "egress leg",
            context=parent,
            kind=SpanKind.CLIENT,
            attributes={
                "tandem.call_id": command.call_id,
                "tandem.leg_id": command.leg_id,
                "tandem.edge": edge,
                "tandem.trunk": target.trunk,
                "tandem.attempt": create.attempt,
                "sip.call_id": sip_call_id,
                "sip.called": mask_number(target.called, mask),
                "sip.calling": mask_number(target.calling, mask),
            },
        )
        # the leg's events carry its span, so the owner's handling of them joins the trace
        self.headers = telemetry.inject({}, trace.set_span_in_context(self.span))
        self.anchored = create.anchored  # its end waits for its RTP figures (`quality`)
        self.finished = self.ended = False

    def event(self, event: pb.LegEvent) -> None:
        if event.kind == pb.LegEvent.ANSWERED:
            self.span.set_attribute("sip.status", event.status)
        elif event.kind == pb.LegEvent.FAILED:
            self.span.set_attribute("tandem.failover_reason", event.failure)
        elif event.kind == pb.LegEvent.RETRYING:  # the next of the trunk's targets (RFC 3263)
            self.span.add_event("target", {"tandem.target": event.reason})

    def finish(self, finished: Finished) -> None:
        span = self.span
        if finished.failure:
            span.set_attribute("tandem.failover_reason", finished.failure)
        span.set_attribute("sip.status", finished.status)
        if finished.status >= 400 and not finished.cancelled:
            span.set_status(Status(StatusCode.ERROR, finished.reason))
        self.finished = True
        if not self.anchored:
            self.end()

    def quality(self, quality: pb.MediaQuality) -> None:
        """The figures of an anchored leg, from its call's owner: they close its span (once
        the leg has finished)."""
        self.span.set_attributes(quality_attributes(quality))
        self.anchored = False
        if self.finished:
            self.end()

    def end(self) -> None:
        if not self.ended:
            self.ended = True
            self.span.end()
