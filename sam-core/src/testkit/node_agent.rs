//! A scriptable [`NodeAgent`] and a trivial [`BootRenderer`] for control-plane tests.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use async_trait::async_trait;

use crate::control::BootRenderer;
use crate::failure::Error;
use crate::model::{NodeId, WorkspaceId};
use crate::node_agent::{
    AgentHealth, NodeAgent, NodeAgentError, SessionReport, SessionRequest, WorkspaceReport,
    WorkspaceRequest,
};
use crate::secret::Secret;
use crate::store::NodeRecord;

/// How the fake VM agents behave.
#[derive(Debug, Clone, PartialEq)]
pub struct FakeAgentScript {
    /// Health probes answered "not reachable" before a node reports ready;
    /// `None` means it never does (an agent that never calls back).
    pub ready_after_probes: Option<u32>,
    /// What a workspace reports once created.
    pub workspace: WorkspaceReport,
    /// What a session reports once started.
    pub session: SessionReport,
}

impl Default for FakeAgentScript {
    /// Ready at the first probe, full profile, and a turn that ends normally.
    fn default() -> Self {
        Self {
            ready_after_probes: Some(0),
            workspace: WorkspaceReport::Ready {
                effective_profile: "full".to_owned(),
                recovery: false,
            },
            session: SessionReport::Stopped {
                reason: crate::session::StopReason::EndTurn,
                last_message: Some("Done.".to_owned()),
            },
        }
    }
}

/// Calls the fake received, for assertions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FakeAgentCall {
    /// `health`.
    Health(NodeId),
    /// `create_workspace`.
    CreateWorkspace(NodeId, WorkspaceId),
    /// `start_session`.
    StartSession(NodeId, WorkspaceId),
    /// `cancel_session`.
    CancelSession(NodeId, WorkspaceId),
    /// `stop_workspace`.
    StopWorkspace(NodeId, WorkspaceId),
}

#[derive(Debug, Default)]
struct State {
    probes: HashMap<NodeId, u32>,
    workspaces: HashMap<WorkspaceId, NodeId>,
    sessions: HashMap<WorkspaceId, SessionReport>,
    calls: Vec<FakeAgentCall>,
    /// Scripts for the next nodes first heard of, in order.
    queued: VecDeque<FakeAgentScript>,
    /// The script each node took from the queue.
    assigned: HashMap<NodeId, FakeAgentScript>,
    workspace_requests: Vec<WorkspaceRequest>,
    session_requests: Vec<SessionRequest>,
    /// Nodes whose agent no longer answers.
    dead: std::collections::HashSet<NodeId>,
}

/// A [`NodeAgent`] whose VM agents follow a [`FakeAgentScript`], answering at once.
#[derive(Debug, Default)]
pub struct FakeNodeAgent {
    script: Mutex<FakeAgentScript>,
    state: Mutex<State>,
}

impl FakeNodeAgent {
    /// A fake following `script`.
    pub fn new(script: FakeAgentScript) -> Self {
        Self {
            script: Mutex::new(script),
            state: Mutex::default(),
        }
    }

    /// Replaces the script for calls from now on.
    pub fn set_script(&self, script: FakeAgentScript) {
        *self.script.lock().expect("script lock") = script;
    }

    /// Gives the next nodes the fake hears of a script of their own, one each in the
    /// order they are first called about; later nodes follow the common script.
    pub fn queue_node_scripts(&self, scripts: impl IntoIterator<Item = FakeAgentScript>) {
        self.state
            .lock()
            .expect("state lock")
            .queued
            .extend(scripts);
    }

    /// Makes `node`'s agent stop answering, as a killed VM agent does through
    /// `HttpNodeAgent`: its health probe is "not reachable" (`Ok(None)`) and every
    /// other call a `transient` failure, as a refused connection is.
    pub fn kill(&self, node: &NodeId) {
        self.state
            .lock()
            .expect("state lock")
            .dead
            .insert(node.clone());
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<FakeAgentCall> {
        self.state.lock().expect("state lock").calls.clone()
    }

    /// The script `node` follows: its own from the queue, or the common one.
    fn script(&self, state: &mut State, node: &NodeId) -> FakeAgentScript {
        if let Some(script) = state.assigned.get(node) {
            return script.clone();
        }
        match state.queued.pop_front() {
            Some(script) => {
                state.assigned.insert(node.clone(), script.clone());
                script
            }
            None => self.script.lock().expect("script lock").clone(),
        }
    }

    /// Every workspace request so far, as received.
    pub fn workspace_requests(&self) -> Vec<WorkspaceRequest> {
        self.state
            .lock()
            .expect("state lock")
            .workspace_requests
            .clone()
    }

    /// Every session request so far, as received (its environment included).
    pub fn session_requests(&self) -> Vec<SessionRequest> {
        self.state
            .lock()
            .expect("state lock")
            .session_requests
            .clone()
    }
}

#[async_trait]
impl NodeAgent for FakeNodeAgent {
    async fn health(&self, node: &NodeRecord) -> Result<Option<AgentHealth>, NodeAgentError> {
        let mut state = self.state.lock().expect("state lock");
        let script = self.script(&mut state, &node.id);
        state.calls.push(FakeAgentCall::Health(node.id.clone()));
        if state.dead.contains(&node.id) {
            return Ok(None);
        }
        let probes = state.probes.entry(node.id.clone()).or_default();
        let ready = script.ready_after_probes.is_some_and(|n| *probes >= n);
        *probes += 1;
        Ok(ready.then(|| AgentHealth {
            version: "fake-1.0".to_owned(),
        }))
    }

    async fn create_workspace(
        &self,
        node: &NodeRecord,
        request: &WorkspaceRequest,
    ) -> Result<(), NodeAgentError> {
        let mut state = self.state.lock().expect("state lock");
        state.calls.push(FakeAgentCall::CreateWorkspace(
            node.id.clone(),
            request.workspace_id.clone(),
        ));
        refused(&state, node)?;
        state
            .workspaces
            .insert(request.workspace_id.clone(), node.id.clone());
        state.workspace_requests.push(request.clone());
        Ok(())
    }

    async fn workspace_status(
        &self,
        node: &NodeRecord,
        workspace: &WorkspaceId,
    ) -> Result<Option<WorkspaceReport>, NodeAgentError> {
        let mut state = self.state.lock().expect("state lock");
        let script = self.script(&mut state, &node.id);
        Ok(state
            .workspaces
            .contains_key(workspace)
            .then_some(script.workspace))
    }

    async fn start_session(
        &self,
        node: &NodeRecord,
        request: &SessionRequest,
    ) -> Result<(), NodeAgentError> {
        let mut state = self.state.lock().expect("state lock");
        let script = self.script(&mut state, &node.id);
        refused(&state, node)?;
        state.calls.push(FakeAgentCall::StartSession(
            node.id.clone(),
            request.workspace_id.clone(),
        ));
        state
            .sessions
            .entry(request.workspace_id.clone())
            .or_insert(script.session);
        state.session_requests.push(request.clone());
        Ok(())
    }

    async fn session_status(
        &self,
        _node: &NodeRecord,
        workspace: &WorkspaceId,
    ) -> Result<Option<SessionReport>, NodeAgentError> {
        Ok(self
            .state
            .lock()
            .expect("state lock")
            .sessions
            .get(workspace)
            .cloned())
    }

    async fn cancel_session(
        &self,
        node: &NodeRecord,
        workspace: &WorkspaceId,
    ) -> Result<(), NodeAgentError> {
        let mut state = self.state.lock().expect("state lock");
        state.calls.push(FakeAgentCall::CancelSession(
            node.id.clone(),
            workspace.clone(),
        ));
        state.sessions.insert(
            workspace.clone(),
            SessionReport::Stopped {
                reason: crate::session::StopReason::Cancelled,
                last_message: None,
            },
        );
        Ok(())
    }

    async fn stop_workspace(
        &self,
        node: &NodeRecord,
        workspace: &WorkspaceId,
    ) -> Result<(), NodeAgentError> {
        let mut state = self.state.lock().expect("state lock");
        state.calls.push(FakeAgentCall::StopWorkspace(
            node.id.clone(),
            workspace.clone(),
        ));
        state.workspaces.remove(workspace);
        state.sessions.remove(workspace);
        Ok(())
    }
}

/// The failure a call to a dead node's agent gets.
fn refused(state: &State, node: &NodeRecord) -> Result<(), NodeAgentError> {
    if state.dead.contains(&node.id) {
        return Err(NodeAgentError {
            category: crate::error::ErrorCategory::Transient,
            message: "the VM agent did not answer: connection refused".to_owned(),
        });
    }
    Ok(())
}

/// A [`BootRenderer`] that renders a minimal cloud-config naming the node; it never
/// includes the token, which is what a real renderer must keep to a root-only file.
#[derive(Debug, Clone, Copy, Default)]
pub struct PlainBoot;

impl BootRenderer for PlainBoot {
    fn user_data(&self, node: &NodeRecord, _token: &Secret) -> Result<String, Error> {
        Ok(format!("#cloud-config\nhostname: {}\n", node.id))
    }
}
