//! Settings a cluster's nodes should share (issue #20): each node registers its
//! authentication, authorization, super users and metadata-log timing in the metadata
//! (`NodeInfo::settings`), and each node's follower reports every one it runs with another
//! value than another node (a warning once per difference, and the gauge
//! `wharf_cluster_settings_differ`). Nothing refuses a node for it: a rolling change of a
//! setting passes through a state where the nodes differ.

use std::collections::BTreeSet;

use crate::cluster::metadata::{settings_differences, MetadataState, SettingDifference};

use super::Broker;

impl Broker {
    /// The settings this node runs with other values than another node does, by key, as
    /// of the metadata this node applied (0 on a lone node).
    pub fn settings_differ(&self) -> usize {
        let Some(cluster) = self.replicated() else {
            return 0;
        };
        let state = cluster.applied().state;
        differing_keys(&settings_differences(&state, cluster.node_id()))
    }

    /// Warns of each difference of `state` not in `reported`, and says when all are gone;
    /// `reported` becomes the differences now.
    pub(crate) fn report_setting_differences(
        &self,
        state: &MetadataState,
        reported: &mut BTreeSet<SettingDifference>,
    ) {
        let Some(cluster) = self.replicated() else {
            return;
        };
        let now: BTreeSet<SettingDifference> = settings_differences(state, cluster.node_id())
            .into_iter()
            .collect();
        for difference in now.difference(reported) {
            tracing::warn!(
                key = difference.key,
                here = difference.here.as_deref().unwrap_or("(unset)"),
                node = difference.node,
                there = difference.there.as_deref().unwrap_or("(unset)"),
                "this node runs with another setting than another node of the cluster: give every node the same"
            );
        }
        if now.is_empty() && !reported.is_empty() {
            tracing::info!("this node's settings are the same as every other node's again");
        }
        *reported = now;
    }
}

/// How many distinct keys differ.
fn differing_keys(differences: &[SettingDifference]) -> usize {
    differences
        .iter()
        .map(|difference| &difference.key)
        .collect::<BTreeSet<_>>()
        .len()
}
