//! An order and its lease as one state machine, pure: which event may happen in which state and
//! what both become. The store moves the money and writes the records around each step.
//!
//! A standing order waiting for an offer has no lease: a cancel or its deadline closes it, and
//! nothing else happens to it.
//!
//! ```text
//!  order/lease       Accept           Reject             Lapse            Cancel               End
//!  Waiting/-         refused          refused            Rejected         Cancelled            refused
//!  Matched/Offered   Leased/Accepted  Rejected/Rejected  Rejected/Lapsed  Cancelled/Cancelled  refused
//!  Leased/Accepted   again            refused            refused          refused (it runs)    Ended/Ended
//!  closed            refused, except the same answer or end report again
//! ```

use std::fmt;

use crate::node::records::{LeaseState, OrderState};

/// What happens to a matched order's lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// The provider accepts the lease.
    Accept,
    /// The provider rejects it.
    Reject,
    /// The provider did not answer by the lease's deadline.
    Lapse,
    /// The buyer cancels the order.
    Cancel,
    /// The provider reports the lease's end.
    End,
}

/// Where an event leads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Both move on. `refund_hold` says the buyer gets the whole hold back (nothing ran);
    /// otherwise what is settled is the store's (an end returns the hold less what was paid).
    Moves {
        order: OrderState,
        lease: LeaseState,
        refund_hold: bool,
    },
    /// The event already happened (a retried answer or end report): nothing changes.
    Again,
    /// An order that never matched closes with this state; nothing was held.
    Unmatched(OrderState),
}

/// Why an event cannot happen in the lease's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("is {} and can no longer be answered", name(.0))]
    Answered(LeaseState),
    #[error("is leased: the provider accepted it and it runs until its end")]
    Running,
    #[error("is {} and cannot be cancelled", name(.0))]
    Closed(OrderState),
    #[error("is {}: only an accepted lease can end", name(.0))]
    NotAccepted(LeaseState),
    #[error("is {}: only an offered lease lapses", name(.0))]
    NotOffered(LeaseState),
    #[error("is waiting for an offer and has no lease yet")]
    Waiting,
}

/// The next step of an order whose lease is in `lease`. An order without a lease (nothing
/// matched) is closed, and so is every event on it.
pub fn next(order: OrderState, lease: Option<LeaseState>, event: Event) -> Result<Step, Refused> {
    use Event::*;
    use LeaseState as L;
    use OrderState as O;
    let Some(lease) = lease else {
        return match (order, event) {
            (O::Waiting, Cancel) => Ok(Step::Unmatched(O::Cancelled)),
            (O::Waiting, Lapse) => Ok(Step::Unmatched(O::Rejected)),
            (O::Waiting, _) => Err(Refused::Waiting),
            _ => Err(Refused::Closed(order)),
        };
    };
    let moves = |order, lease, refund_hold| {
        Ok(Step::Moves {
            order,
            lease,
            refund_hold,
        })
    };
    match (event, lease) {
        (Accept, L::Offered) => moves(O::Leased, L::Accepted, false),
        (Reject, L::Offered) => moves(O::Rejected, L::Rejected, true),
        (Accept, L::Accepted) | (Reject, L::Rejected) => Ok(Step::Again),
        (Accept | Reject, other) => Err(Refused::Answered(other)),
        (Lapse, L::Offered) => moves(O::Rejected, L::Lapsed, true),
        (Lapse, other) => Err(Refused::NotOffered(other)),
        (Cancel, L::Offered) => moves(O::Cancelled, L::Cancelled, true),
        (Cancel, L::Accepted) => Err(Refused::Running),
        (Cancel, _) => Err(Refused::Closed(order)),
        (End, L::Accepted) => moves(O::Ended, L::Ended, false),
        (End, L::Ended) => Ok(Step::Again),
        (End, other) => Err(Refused::NotAccepted(other)),
    }
}

/// Whether a lease in `state` takes receipts and answers challenges: only while it runs.
pub fn meters(state: LeaseState) -> bool {
    state == LeaseState::Accepted
}

/// Whether a lease in `state` waits for its provider's answer (and is resent on a new stream).
pub fn awaits_answer(state: LeaseState) -> bool {
    state == LeaseState::Offered
}

/// When a lease in `state` whose answer was due at `answer_by` lapses: the second after it.
pub fn lapses_at(state: LeaseState, answer_by: i64) -> Option<i64> {
    awaits_answer(state).then_some(answer_by + 1)
}

/// Whether an order in `state` still holds money in escrow.
pub fn holds_escrow(state: OrderState) -> bool {
    matches!(state, OrderState::Matched | OrderState::Leased)
}

/// A state as messages show it: `accepted`, `lapsed`.
pub fn name(state: impl fmt::Debug) -> String {
    format!("{state:?}").to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;
    use Event::*;
    use LeaseState as L;
    use OrderState as O;

    /// Every (order, lease) pair the store can hold: the lease's state fixes the order's.
    const PAIRS: [(OrderState, Option<LeaseState>); 9] = [
        (O::Rejected, None),
        (O::Waiting, None),
        (O::Cancelled, None),
        (O::Matched, Some(L::Offered)),
        (O::Leased, Some(L::Accepted)),
        (O::Ended, Some(L::Ended)),
        (O::Rejected, Some(L::Rejected)),
        (O::Rejected, Some(L::Lapsed)),
        (O::Cancelled, Some(L::Cancelled)),
    ];
    const EVENTS: [Event; 5] = [Accept, Reject, Lapse, Cancel, End];

    fn moves(order: OrderState, lease: LeaseState, refund_hold: bool) -> Result<Step, Refused> {
        Ok(Step::Moves {
            order,
            lease,
            refund_hold,
        })
    }

    /// The whole table: every event in every state the store can hold.
    #[test]
    fn every_event_in_every_state() {
        type Row = (OrderState, Option<LeaseState>, Event, Result<Step, Refused>);
        let table: [Row; 45] = [
            (
                O::Cancelled,
                None,
                Accept,
                Err(Refused::Closed(O::Cancelled)),
            ),
            (
                O::Cancelled,
                None,
                Reject,
                Err(Refused::Closed(O::Cancelled)),
            ),
            (
                O::Cancelled,
                None,
                Lapse,
                Err(Refused::Closed(O::Cancelled)),
            ),
            (
                O::Cancelled,
                None,
                Cancel,
                Err(Refused::Closed(O::Cancelled)),
            ),
            (O::Cancelled, None, End, Err(Refused::Closed(O::Cancelled))),
            (O::Waiting, None, Accept, Err(Refused::Waiting)),
            (O::Waiting, None, Reject, Err(Refused::Waiting)),
            (O::Waiting, None, Lapse, Ok(Step::Unmatched(O::Rejected))),
            (O::Waiting, None, Cancel, Ok(Step::Unmatched(O::Cancelled))),
            (O::Waiting, None, End, Err(Refused::Waiting)),
            (O::Rejected, None, Accept, Err(Refused::Closed(O::Rejected))),
            (O::Rejected, None, Reject, Err(Refused::Closed(O::Rejected))),
            (O::Rejected, None, Lapse, Err(Refused::Closed(O::Rejected))),
            (O::Rejected, None, Cancel, Err(Refused::Closed(O::Rejected))),
            (O::Rejected, None, End, Err(Refused::Closed(O::Rejected))),
            (
                O::Matched,
                Some(L::Offered),
                Accept,
                moves(O::Leased, L::Accepted, false),
            ),
            (
                O::Matched,
                Some(L::Offered),
                Reject,
                moves(O::Rejected, L::Rejected, true),
            ),
            (
                O::Matched,
                Some(L::Offered),
                Lapse,
                moves(O::Rejected, L::Lapsed, true),
            ),
            (
                O::Matched,
                Some(L::Offered),
                Cancel,
                moves(O::Cancelled, L::Cancelled, true),
            ),
            (
                O::Matched,
                Some(L::Offered),
                End,
                Err(Refused::NotAccepted(L::Offered)),
            ),
            (O::Leased, Some(L::Accepted), Accept, Ok(Step::Again)),
            (
                O::Leased,
                Some(L::Accepted),
                Reject,
                Err(Refused::Answered(L::Accepted)),
            ),
            (
                O::Leased,
                Some(L::Accepted),
                Lapse,
                Err(Refused::NotOffered(L::Accepted)),
            ),
            (O::Leased, Some(L::Accepted), Cancel, Err(Refused::Running)),
            (
                O::Leased,
                Some(L::Accepted),
                End,
                moves(O::Ended, L::Ended, false),
            ),
            (
                O::Ended,
                Some(L::Ended),
                Accept,
                Err(Refused::Answered(L::Ended)),
            ),
            (
                O::Ended,
                Some(L::Ended),
                Reject,
                Err(Refused::Answered(L::Ended)),
            ),
            (
                O::Ended,
                Some(L::Ended),
                Lapse,
                Err(Refused::NotOffered(L::Ended)),
            ),
            (
                O::Ended,
                Some(L::Ended),
                Cancel,
                Err(Refused::Closed(O::Ended)),
            ),
            (O::Ended, Some(L::Ended), End, Ok(Step::Again)),
            (
                O::Rejected,
                Some(L::Rejected),
                Accept,
                Err(Refused::Answered(L::Rejected)),
            ),
            (O::Rejected, Some(L::Rejected), Reject, Ok(Step::Again)),
            (
                O::Rejected,
                Some(L::Rejected),
                Lapse,
                Err(Refused::NotOffered(L::Rejected)),
            ),
            (
                O::Rejected,
                Some(L::Rejected),
                Cancel,
                Err(Refused::Closed(O::Rejected)),
            ),
            (
                O::Rejected,
                Some(L::Rejected),
                End,
                Err(Refused::NotAccepted(L::Rejected)),
            ),
            (
                O::Rejected,
                Some(L::Lapsed),
                Accept,
                Err(Refused::Answered(L::Lapsed)),
            ),
            (
                O::Rejected,
                Some(L::Lapsed),
                Reject,
                Err(Refused::Answered(L::Lapsed)),
            ),
            (
                O::Rejected,
                Some(L::Lapsed),
                Lapse,
                Err(Refused::NotOffered(L::Lapsed)),
            ),
            (
                O::Rejected,
                Some(L::Lapsed),
                Cancel,
                Err(Refused::Closed(O::Rejected)),
            ),
            (
                O::Rejected,
                Some(L::Lapsed),
                End,
                Err(Refused::NotAccepted(L::Lapsed)),
            ),
            (
                O::Cancelled,
                Some(L::Cancelled),
                Accept,
                Err(Refused::Answered(L::Cancelled)),
            ),
            (
                O::Cancelled,
                Some(L::Cancelled),
                Reject,
                Err(Refused::Answered(L::Cancelled)),
            ),
            (
                O::Cancelled,
                Some(L::Cancelled),
                Lapse,
                Err(Refused::NotOffered(L::Cancelled)),
            ),
            (
                O::Cancelled,
                Some(L::Cancelled),
                Cancel,
                Err(Refused::Closed(O::Cancelled)),
            ),
            (
                O::Cancelled,
                Some(L::Cancelled),
                End,
                Err(Refused::NotAccepted(L::Cancelled)),
            ),
        ];
        for (order, lease, event, expected) in table {
            assert_eq!(
                next(order, lease, event),
                expected,
                "{event:?} on {order:?}/{lease:?}"
            );
        }
    }

    /// Every step lands on a pair the store can hold, and a closed pair stays closed.
    #[test]
    fn steps_stay_within_the_pairs_and_closed_states_are_final() {
        for pair in PAIRS {
            for event in EVENTS {
                match next(pair.0, pair.1, event) {
                    Ok(Step::Moves { order, lease, .. }) => assert!(
                        PAIRS.contains(&(order, Some(lease))),
                        "{event:?} on {pair:?} → {order:?}/{lease:?}"
                    ),
                    Ok(Step::Unmatched(order)) => assert!(
                        pair.0 == O::Waiting && PAIRS.contains(&(order, None)),
                        "{event:?} on {pair:?} → {order:?}"
                    ),
                    _ => {}
                }
            }
        }
        let closed = |p: &(OrderState, Option<LeaseState>)| !holds_escrow(p.0) && p.0 != O::Waiting;
        for pair in PAIRS.into_iter().filter(closed) {
            for event in EVENTS {
                assert!(
                    matches!(next(pair.0, pair.1, event), Err(_) | Ok(Step::Again)),
                    "{event:?} moved the closed {pair:?}"
                );
            }
        }
    }

    /// Money: a step that closes the order before anything ran returns the whole hold; the two
    /// steps that leave escrow holding are exactly those of a lease that runs or will.
    #[test]
    fn the_hold_is_refunded_whole_exactly_when_nothing_ran() {
        for pair in PAIRS {
            for event in EVENTS {
                if let Ok(Step::Moves {
                    order, refund_hold, ..
                }) = next(pair.0, pair.1, event)
                {
                    let ran = pair.1 == Some(L::Accepted);
                    assert_eq!(
                        refund_hold,
                        !ran && !holds_escrow(order),
                        "{event:?} on {pair:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn refusals_say_the_state() {
        assert_eq!(
            Refused::Answered(L::Lapsed).to_string(),
            "is lapsed and can no longer be answered"
        );
        assert_eq!(
            Refused::NotAccepted(L::Offered).to_string(),
            "is offered: only an accepted lease can end"
        );
        assert_eq!(
            lapses_at(L::Offered, 100),
            Some(101),
            "due at 100: an answer at 100 is in time"
        );
        assert_eq!(lapses_at(L::Accepted, 100), None);
        assert!(meters(L::Accepted));
        assert!(
            [L::Offered, L::Ended, L::Rejected, L::Lapsed, L::Cancelled]
                .into_iter()
                .all(|s| !meters(s))
        );
    }
}
