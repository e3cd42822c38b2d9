//! What a server answers to one client line. The handler appends the reply
//! to a buffer and says what it answered; the connection writes and logs.

use std::sync::Arc;

use crate::places::NearbyQuery;
use crate::places::render::RenderedPlaces;
use crate::protocol::framing::Frame;
use crate::protocol::{self, Request};
use crate::replica::store::Applied;
use crate::stats::Command;

use super::Clients;

/// What a line was answered with, for the log.
pub enum Answered {
    /// A one-line reply to an IAMAT (its AT line) or to an invalid line
    /// (`? <line>`; a WHATSAT about an unknown client is one).
    Line(Command),
    /// A WHATSAT answer: the client's AT line and the places JSON.
    Places {
        at_line: bytes::Bytes,
        rendered: Arc<RenderedPlaces>,
    },
}

/// Appends the reply to one framed line, whose bytes were read at
/// `received` (nanoseconds since the epoch), to `out`.
pub async fn handle(
    clients: &Clients,
    frame: &Frame,
    received: i128,
    out: &mut Vec<u8>,
) -> Answered {
    let line = match frame {
        Frame::Line(line) => line,
        Frame::TooLong(head) => {
            clients.stats.invalid.bump();
            protocol::invalid_reply(head, out);
            return Answered::Line(Command::Other);
        }
    };
    match protocol::parse_request(line) {
        Ok(Request::Iamat(iamat)) => {
            // Stored, and handed to every neighbour link before the reply
            // is written (see `connection::reply`).
            let (at_line, applied) =
                clients
                    .replica
                    .accept_client(received, iamat.client_time, out, |received, out| {
                        protocol::write_at(&clients.name, received, &iamat, out)
                    });
            let counter = match applied {
                Applied::Stored(_) => &clients.stats.iamat_stored,
                Applied::Full => {
                    // A line the server will not take: `?`, as SPEC §5
                    // answers any line it does not take.
                    out.truncate(at_line.start);
                    protocol::invalid_reply(line, out);
                    refused_at_the_ceiling(clients);
                    return Answered::Line(Command::Iamat);
                }
                _ => &clients.stats.iamat_not_newer,
            };
            counter.bump();
            out.push(b'\n');
            Answered::Line(Command::Iamat)
        }
        Ok(Request::Whatsat(whatsat)) => match clients.replica.store().get(whatsat.client_id) {
            Some(report) => {
                // The places may take a while: earlier reports of this
                // batch are not held back meanwhile.
                clients.replica.announce();
                let query = NearbyQuery {
                    lat: report.location.lat,
                    lng: report.location.lng,
                    radius_m: whatsat.radius.metres,
                    radius_m_text: whatsat.radius.metres_text.clone(),
                    limit: whatsat.bound,
                };
                let rendered = clients.answers.answer(&query).await;
                clients.stats.whatsat.bump();
                protocol::whatsat_reply(&report.at_line, &rendered.json, out);
                Answered::Places {
                    at_line: report.at_line,
                    rendered,
                }
            }
            None => {
                clients.stats.whatsat_unknown.bump();
                clients.stats.invalid.bump();
                protocol::invalid_reply(line, out);
                Answered::Line(Command::Whatsat)
            }
        },
        Err(reason) => {
            tracing::debug!(%reason, "invalid line");
            clients.stats.invalid.bump();
            protocol::invalid_reply(line, out);
            Answered::Line(Command::Other)
        }
    }
}

/// Counts an IAMAT refused because the store holds `max_clients`, and
/// warns about it once a minute at most.
fn refused_at_the_ceiling(clients: &Clients) {
    clients.stats.iamat_refused.bump();
    if let Some(refused) = clients.refusals.event(crate::replica::unix_secs()) {
        tracing::warn!(
            target: crate::log::OPERATOR,
            max_clients = clients.limits.max_clients,
            refused,
            "the store holds max_clients clients: IAMATs about new clients are answered `?`"
        );
    }
}
