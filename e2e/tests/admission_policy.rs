//! The chart's ValidatingAdmissionPolicy keeping each agent to its own node's ProxyNode
//! (issue 14, defect 7), evaluated the way the API server evaluates it: the policy is
//! rendered by helm from the chart, then its match conditions, variables and validations
//! run (the `cel` crate) on the inputs an admission request gives them — `request` with
//! the user's name and extras, `object` the ProxyNode written.
//!
//! helm is the one on `PATH` or the one `scripts/check-chart.sh` installs into
//! `target/tools`; without it this test FAILS when `CI=true`, and otherwise says loudly
//! that it was skipped.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{anyhow, bail, Context as _, Result};
use cel::{Context, Program, Value};
use serde::Deserialize;
use serde_json::json;
use switchyard_e2e::agent::workspace_root;

const NAMESPACE: &str = "kube-system";
const RELEASE: &str = "switchyard";
const AGENT: &str = "system:serviceaccount:kube-system:switchyard-agent";
const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";

fn helm() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("helm"))
            .find(|p| p.is_file())
    });
    let found = on_path.or_else(|| {
        let p = workspace_root().join("target/tools/helm");
        p.is_file().then_some(p)
    });
    if found.is_none() {
        let why =
            "helm is neither on PATH nor in target/tools (scripts/check-chart.sh installs it)";
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("admission_policy: {why}; CI=true so this is a failure");
        }
        let _ = std::io::Write::write_all(
            &mut std::io::stderr(),
            format!("\n*** SKIPPED: admission_policy: {why} ***\n\n").as_bytes(),
        );
    }
    found
}

/// What one policy says about one request.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// A match condition is false: the policy does not apply.
    NotMatched,
    Allowed,
    Denied(String),
}

/// The policy's CEL, compiled.
struct Policy {
    match_conditions: Vec<Program>,
    variables: Vec<(String, Program)>,
    /// (expression, message, messageExpression)
    validations: Vec<(Program, String, Option<Program>)>,
}

fn compile(expr: &serde_yaml::Value) -> Result<Program> {
    let text = expr
        .as_str()
        .ok_or_else(|| anyhow!("not a string: {expr:?}"))?;
    Program::compile(text).map_err(|e| anyhow!("{text}: {e}"))
}

impl Policy {
    fn render(helm: &Path) -> Result<Policy> {
        let out = Command::new(helm)
            .args(["template", RELEASE])
            .arg(workspace_root().join("charts/switchyard"))
            .args(["--namespace", NAMESPACE])
            .args(["--show-only", "templates/agent-admission-policy.yaml"])
            .output()
            .context("running helm")?;
        if !out.status.success() {
            bail!("helm template: {}", String::from_utf8_lossy(&out.stderr));
        }
        let text = String::from_utf8(out.stdout)?;
        let policy = serde_yaml::Deserializer::from_str(&text)
            .filter_map(|doc| serde_yaml::Value::deserialize(doc).ok())
            .find(|d| d["kind"] == "ValidatingAdmissionPolicy")
            .ok_or_else(|| anyhow!("no ValidatingAdmissionPolicy rendered:\n{text}"))?;
        let spec = &policy["spec"];
        let list = |key: &str| spec[key].as_sequence().cloned().unwrap_or_default();
        Ok(Policy {
            match_conditions: list("matchConditions")
                .iter()
                .map(|c| compile(&c["expression"]))
                .collect::<Result<_>>()?,
            variables: list("variables")
                .iter()
                .map(|v| {
                    Ok((
                        v["name"].as_str().unwrap_or("").to_string(),
                        compile(&v["expression"])?,
                    ))
                })
                .collect::<Result<_>>()?,
            validations: list("validations")
                .iter()
                .map(|v| {
                    let message = v["message"].as_str().unwrap_or("").to_string();
                    let expr = v.get("messageExpression").map(compile).transpose()?;
                    Ok((compile(&v["expression"])?, message, expr))
                })
                .collect::<Result<_>>()?,
        })
    }

    /// Evaluates the policy as the API server does: match conditions, then variables
    /// (each sees the ones before), then every validation; failurePolicy Fail makes an
    /// evaluation error a denial.
    fn admit(&self, request: &serde_json::Value, object: &serde_json::Value) -> Verdict {
        let mut ctx = Context::default();
        ctx.add_variable("request", request)
            .expect("request converts");
        ctx.add_variable("object", object).expect("object converts");
        for condition in &self.match_conditions {
            match condition.execute(&ctx) {
                Ok(Value::Bool(true)) => {}
                Ok(Value::Bool(false)) => return Verdict::NotMatched,
                other => return Verdict::Denied(format!("match condition: {other:?}")),
            }
        }
        let mut variables: HashMap<String, Value> = HashMap::new();
        for (name, program) in &self.variables {
            ctx.add_variable_from_value("variables", variables.clone());
            match program.execute(&ctx) {
                Ok(v) => variables.insert(name.clone(), v),
                Err(e) => return Verdict::Denied(format!("variable {name}: {e:?}")),
            };
        }
        ctx.add_variable_from_value("variables", variables);
        for (program, message, message_expr) in &self.validations {
            match program.execute(&ctx) {
                Ok(Value::Bool(true)) => continue,
                Ok(Value::Bool(false)) => {}
                other => return Verdict::Denied(format!("validation error: {other:?}")),
            }
            let text = match message_expr.as_ref().map(|p| p.execute(&ctx)) {
                Some(Ok(Value::String(s))) => s.to_string(),
                // As the API server: a failing messageExpression falls back to message.
                _ => message.clone(),
            };
            return Verdict::Denied(text);
        }
        Verdict::Allowed
    }
}

fn request(user: &str, extra: Option<serde_json::Value>, operation: &str) -> serde_json::Value {
    let mut user_info = json!({"username": user, "groups": ["system:serviceaccounts"]});
    if let Some(extra) = extra {
        user_info["extra"] = extra;
    }
    json!({
        "operation": operation,
        "resource": {"group": "switchyard.dev", "version": "v1alpha1", "resource": "proxynodes"},
        "userInfo": user_info,
    })
}

fn proxy_node(name: &str) -> serde_json::Value {
    json!({
        "apiVersion": "switchyard.dev/v1alpha1",
        "kind": "ProxyNode",
        "metadata": {"name": name},
        "status": {"activeMode": "nftables"},
    })
}

fn on_node(node: &str) -> Option<serde_json::Value> {
    Some(json!({
        NODE_NAME_EXTRA: [node],
        "authentication.kubernetes.io/pod-name": ["switchyard-agent-x1"],
    }))
}

#[test]
fn each_agent_writes_only_its_own_proxynode() -> Result<()> {
    let Some(helm) = helm() else {
        return Ok(());
    };
    let policy = Policy::render(&helm)?;
    assert_eq!(policy.match_conditions.len(), 1);

    // The agent on node-a writes node-a's ProxyNode (create, or status update): allowed.
    for op in ["CREATE", "UPDATE"] {
        assert_eq!(
            policy.admit(
                &request(AGENT, on_node("node-a"), op),
                &proxy_node("node-a")
            ),
            Verdict::Allowed,
            "{op}"
        );
    }
    // ...and node-b's: denied, saying which node it is on.
    assert_eq!(
        policy.admit(
            &request(AGENT, on_node("node-a"), "UPDATE"),
            &proxy_node("node-b")
        ),
        Verdict::Denied(
            "the agent on node node-a may write only ProxyNode node-a, not node-b".into()
        )
    );
    // A token without node identity (no extras at all, other extras only, or two
    // node names): denied, never an evaluation error.
    let no_identity = [
        None,
        Some(json!({"authentication.kubernetes.io/pod-name": ["p"]})),
        Some(json!({NODE_NAME_EXTRA: []})),
        Some(json!({NODE_NAME_EXTRA: ["node-a", "node-b"]})),
    ];
    for extra in no_identity {
        let verdict = policy.admit(
            &request(AGENT, extra.clone(), "UPDATE"),
            &proxy_node("node-a"),
        );
        match verdict {
            Verdict::Denied(m) if m.contains("carries no node identity") => {}
            other => panic!("extra {extra:?}: {other:?}"),
        }
    }
    // Other users are not this policy's business (the operator deletes ProxyNodes,
    // admins may edit them): not matched, even when naming another node.
    for user in [
        "system:serviceaccount:kube-system:switchyard-operator",
        "system:serviceaccount:other:switchyard-agent",
        "kubernetes-admin",
    ] {
        assert_eq!(
            policy.admit(
                &request(user, on_node("node-a"), "UPDATE"),
                &proxy_node("node-b")
            ),
            Verdict::NotMatched,
            "{user}"
        );
    }
    Ok(())
}
