//! The per-sender quota: how many mails one sender sent to one mailbox in a clock hour.
//!
//! `mail#<mailbox>#sender#<hash of the address>#<YYYYMMDDHH>`: attribute `mails`, the mails
//! counted, expiring an hour after the hour (`expires_at`). The poller takes the units of a
//! window's mails from one sender at once ([`take_what_fits`]: one conditional update when they
//! all fit, two when only some do) and gives back the units of mails it then did not try.

use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::ReturnValuesOnConditionCheckFailure;

use super::item::{get_n, n, s, sdk_err};
use super::{DynamoStateStore, StoreError};

/// How many of `wanted` units fit under `max` when `counted` are taken already.
pub fn units_that_fit(wanted: u32, max: u32, counted: u32) -> u32 {
    wanted.min(max.saturating_sub(counted))
}

/// Conditional adds tried before a count that changes under each of them is an error.
const ATTEMPTS: usize = 4;

/// Take up to `wanted` units of a quota of `max` through one conditional add, `add(units)`: it
/// adds `units` when the count is at most `max - units` and answers `None`, or adds nothing and
/// answers the count it found. The first add asks for all of `wanted` (up to `max`); a refused
/// one is asked again for what is left of the count it found. So: one call when all fit or none
/// do, two when only some do. Returns the units taken.
pub async fn take_what_fits<F, Fut>(wanted: u32, max: u32, mut add: F) -> Result<u32, StoreError>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<Option<u32>, StoreError>>,
{
    let mut units = units_that_fit(wanted, max, 0);
    for _ in 0..ATTEMPTS {
        if units == 0 {
            return Ok(0);
        }
        match add(units).await? {
            None => return Ok(units),
            Some(counted) => units = units_that_fit(wanted, max, counted),
        }
    }
    Err(StoreError {
        operation: "UpdateItem sender quota".to_owned(),
        detail: format!("the count changed under each of {ATTEMPTS} conditional updates"),
    })
}

impl DynamoStateStore {
    pub(super) async fn take_sender_units(
        &self,
        pk: &str,
        wanted: u32,
        max: u32,
        expires_at: i64,
    ) -> Result<u32, StoreError> {
        take_what_fits(wanted, max, |units| {
            self.add_sender_units(pk, units, max, expires_at)
        })
        .await
    }

    /// Add `units` to the count of `pk` when it stays within `max`; else the count found (the
    /// refused update returns the item, so this is still one call).
    async fn add_sender_units(
        &self,
        pk: &str,
        units: u32,
        max: u32,
        expires_at: i64,
    ) -> Result<Option<u32>, StoreError> {
        let added = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .update_expression("ADD mails :units SET expires_at = :expires")
            .condition_expression("attribute_not_exists(mails) OR mails <= :limit")
            .expression_attribute_values(":units", n(units))
            .expression_attribute_values(":limit", n(max - units))
            .expression_attribute_values(":expires", n(expires_at))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match added {
            Ok(_) => Ok(None),
            Err(e) => match e.as_service_error() {
                Some(UpdateItemError::ConditionalCheckFailedException(refused)) => {
                    let item = match refused.item() {
                        Some(item) => Some(item.clone()),
                        // A store that does not return the item: read it.
                        None => self.get("GetItem sender quota", pk).await?,
                    };
                    Ok(Some(
                        item.as_ref()
                            .and_then(|item| get_n(item, "mails"))
                            .unwrap_or(0),
                    ))
                }
                _ => Err(sdk_err("UpdateItem sender quota", e)),
            },
        }
    }

    /// Take `units` off the count of `pk`, never below zero (an item that expired or was
    /// reset in between is left as it is).
    pub(super) async fn give_back_sender_units(
        &self,
        pk: &str,
        units: u32,
    ) -> Result<(), StoreError> {
        let taken_off = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .update_expression("ADD mails :minus")
            .condition_expression("mails >= :units")
            .expression_attribute_values(":minus", n(-i64::from(units)))
            .expression_attribute_values(":units", n(units))
            .send()
            .await;
        match taken_off {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
            {
                Ok(())
            }
            Err(e) => Err(sdk_err("UpdateItem sender quota give-back", e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// The conditional add on a count in memory, as the state table does it; calls counted.
    struct Count {
        mails: Mutex<u32>,
        calls: Mutex<u32>,
    }

    impl Count {
        fn at(mails: u32) -> Count {
            Count {
                mails: Mutex::new(mails),
                calls: Mutex::new(0),
            }
        }

        async fn take(&self, wanted: u32, max: u32) -> u32 {
            take_what_fits(wanted, max, |units| {
                *self.calls.lock().unwrap() += 1;
                let mut mails = self.mails.lock().unwrap();
                let answer = if *mails <= max - units {
                    *mails += units;
                    None
                } else {
                    Some(*mails)
                };
                async move { Ok(answer) }
            })
            .await
            .unwrap()
        }

        fn mails(&self) -> u32 {
            *self.mails.lock().unwrap()
        }

        fn calls(&self) -> u32 {
            *self.calls.lock().unwrap()
        }
    }

    #[tokio::test]
    async fn all_that_fit_are_taken_in_one_call() {
        let count = Count::at(0);
        assert_eq!(count.take(5, 100).await, 5);
        assert_eq!((count.mails(), count.calls()), (5, 1));
        assert_eq!(count.take(95, 100).await, 95);
        assert_eq!((count.mails(), count.calls()), (100, 2));
    }

    #[tokio::test]
    async fn more_than_the_quota_on_a_fresh_count_takes_the_quota_in_one_call() {
        let count = Count::at(0);
        assert_eq!(count.take(5, 3).await, 3);
        assert_eq!((count.mails(), count.calls()), (3, 1));
    }

    #[tokio::test]
    async fn more_than_is_left_takes_what_is_left_in_two_calls() {
        let count = Count::at(1);
        assert_eq!(count.take(5, 3).await, 2);
        assert_eq!((count.mails(), count.calls()), (3, 2));
    }

    #[tokio::test]
    async fn a_used_up_quota_takes_nothing_in_one_call() {
        let count = Count::at(3);
        assert_eq!(count.take(2, 3).await, 0);
        assert_eq!((count.mails(), count.calls()), (3, 1));
        // Lowered below what was counted: still nothing, never a negative share.
        assert_eq!(count.take(2, 2).await, 0);
        assert_eq!(count.mails(), 3);
    }

    #[tokio::test]
    async fn a_count_that_keeps_changing_is_an_error() {
        let mut calls = 0;
        let taken = take_what_fits(5, 10, |_| {
            calls += 1;
            // Someone else takes one more each time.
            let found = 6 + calls;
            async move { Ok(Some(found)) }
        })
        .await;
        let err = taken.unwrap_err();
        assert!(err.detail.contains("changed"), "{err}");
        assert_eq!(calls, ATTEMPTS as u32);
    }

    #[test]
    fn units_that_fit_never_pass_the_quota() {
        assert_eq!(units_that_fit(5, 3, 0), 3);
        assert_eq!(units_that_fit(2, 3, 0), 2);
        assert_eq!(units_that_fit(5, 3, 2), 1);
        assert_eq!(units_that_fit(5, 3, 3), 0);
        assert_eq!(units_that_fit(5, 3, 7), 0);
    }
}
