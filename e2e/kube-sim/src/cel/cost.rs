//! Worst-case cost of one `x-kubernetes-validations` rule, estimated as the API server
//! does when a CRD is created (cel-go `checker/cost.go` with the Kubernetes library's
//! `EstimateCallCost`, apiserver `pkg/cel/library/cost.go`), written from those sources:
//!
//! - identifiers and selections on objects or maps cost 1, literals 0, `has()` 1;
//! - list literals 10, map literals 30, plus their elements;
//! - a comprehension (`all`, `exists`, `map`, `filter`, ...) costs its range, its start
//!   value and its result, plus `size(range) × (condition + step)`;
//! - `&&` and `||` cost their operands (the minimum only the left one); `?:` the
//!   condition plus the dearer branch;
//! - string work is 0.1 per byte traversed: `==` on strings takes the shorter maximum,
//!   `startsWith` the prefix, `contains` the product of both lengths, `matches` the
//!   product of `(length + 1) × 0.1` and `regex length × 0.25` (a guess of the API server:
//!   a regex "expression" is about four characters); `isCIDR`, `isIP`, `cidr`, `ip`, `url`
//!   a traversal of their argument; `x in list` the list's size;
//! - everything else costs 1 plus its arguments.
//!
//! Sizes come from [`DeclType`]: bounded by `maxLength`/`maxItems`/`maxProperties`, else
//! by the request size. Costs saturate at `u64::MAX` as in cel-go.
//!
//! The same walk type-checks what the API server would refuse to compile: a field the
//! schema does not declare, or a function the Kubernetes CEL environment does not have.

use std::collections::HashMap;
use std::sync::LazyLock;

use cel::common::ast::{CallExpr, ComprehensionExpr, Expr, IdedExpr, LiteralValue};

use super::decl::{DeclKind, DeclType};

/// A (min, max) cost range.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cost {
    pub min: u64,
    pub max: u64,
}

impl Cost {
    pub const fn fixed(c: u64) -> Cost {
        Cost { min: c, max: c }
    }
    fn add(self, o: Cost) -> Cost {
        Cost {
            min: self.min.saturating_add(o.min),
            max: self.max.saturating_add(o.max),
        }
    }
    fn union(self, o: Cost) -> Cost {
        Cost {
            min: self.min.min(o.min),
            max: self.max.max(o.max),
        }
    }
    fn mul(self, o: Cost) -> Cost {
        Cost {
            min: self.min.saturating_mul(o.min),
            max: self.max.saturating_mul(o.max),
        }
    }
}

/// A (min, max) size range; same arithmetic as [`Cost`].
type Size = Cost;

const UNKNOWN: Size = Size {
    min: 0,
    max: u64::MAX,
};
const STRING_TRAVERSAL: f64 = 0.1;
const REGEX_LENGTH: f64 = 0.25;

fn by_factor(s: Size, f: f64) -> Cost {
    let one = |x: u64| {
        let v = (x as f64 * f).ceil();
        if v >= u64::MAX as f64 {
            u64::MAX
        } else {
            v as u64
        }
    };
    Cost {
        min: one(s.min),
        max: one(s.max),
    }
}

/// What the estimator knows about a value.
#[derive(Debug, Clone, PartialEq)]
enum Ty {
    Str,
    Int,
    Uint,
    Double,
    Bool,
    Bytes,
    Duration,
    Timestamp,
    Null,
    List(Box<Ty>),
    Map(Box<Ty>),
    Object,
    Dyn,
}

impl Ty {
    fn of(decl: &DeclType) -> Ty {
        match &decl.kind {
            DeclKind::Object(_) => Ty::Object,
            DeclKind::List(e) => Ty::List(Box::new(Ty::of(e))),
            DeclKind::Map(v) => Ty::Map(Box::new(Ty::of(v))),
            DeclKind::String => Ty::Str,
            DeclKind::Bytes => Ty::Bytes,
            DeclKind::Int => Ty::Int,
            DeclKind::Double => Ty::Double,
            DeclKind::Bool => Ty::Bool,
            DeclKind::Duration => Ty::Duration,
            DeclKind::Timestamp => Ty::Timestamp,
            DeclKind::Dyn => Ty::Dyn,
        }
    }
    fn scalar(&self) -> bool {
        matches!(
            self,
            Ty::Int | Ty::Uint | Ty::Double | Ty::Bool | Ty::Duration | Ty::Timestamp | Ty::Null
        )
    }
}

/// One estimated expression.
#[derive(Debug, Clone)]
struct Node<'d> {
    cost: Cost,
    ty: Ty,
    /// The schema node it reads (its size bounds), when it is one.
    decl: Option<&'d DeclType>,
    /// A size computed from the expression itself (literals, call results).
    size: Option<Size>,
}

impl Node<'_> {
    fn size_or_unknown(&self) -> Size {
        if let Some(s) = self.size {
            return s;
        }
        if let Some(d) = self.decl {
            if !Ty::of(d).scalar() {
                return Size {
                    min: 0,
                    max: d.max_elements,
                };
            }
        }
        if self.ty.scalar() {
            return Size::fixed(1);
        }
        UNKNOWN
    }
}

/// A rule that would not compile in the API server's CEL environment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("compilation failed: {0}")]
pub struct CompileError(pub String);

static MAP_KEY: LazyLock<DeclType> = LazyLock::new(DeclType::unbounded_string);

struct Estimator<'d> {
    scopes: HashMap<String, Vec<Node<'d>>>,
}

/// The estimated cost of `rule` with `self` of type `root` (and `oldSelf` alike).
pub fn estimate(rule: &str, root: &DeclType) -> Result<Cost, CompileError> {
    let program = cel::Program::compile(rule).map_err(|e| CompileError(e.to_string()))?;
    let mut est = Estimator {
        scopes: HashMap::new(),
    };
    for var in ["self", "oldSelf"] {
        est.scopes.insert(
            var.into(),
            vec![Node {
                cost: Cost::fixed(1),
                ty: Ty::of(root),
                decl: Some(root),
                size: None,
            }],
        );
    }
    let node = est.expr(program.expression())?;
    if !matches!(node.ty, Ty::Bool | Ty::Dyn) {
        return Err(CompileError(format!(
            "cel expression must evaluate to a bool, not {:?}",
            node.ty
        )));
    }
    Ok(node.cost)
}

impl<'d> Estimator<'d> {
    fn expr(&mut self, e: &IdedExpr) -> Result<Node<'d>, CompileError> {
        Ok(match &e.expr {
            Expr::Literal(l) => literal(l),
            Expr::Ident(name) => {
                let mut n = self
                    .scopes
                    .get(name)
                    .and_then(|s| s.last())
                    .cloned()
                    .ok_or_else(|| {
                        CompileError(format!(
                            "undeclared reference to '{name}' (in container '')"
                        ))
                    })?;
                n.cost = Cost::fixed(1);
                n
            }
            Expr::Select(sel) => {
                let operand = self.expr(&sel.operand)?;
                let field = select_field(&operand, &sel.field)?;
                if sel.test {
                    return Ok(Node {
                        cost: operand.cost.add(Cost::fixed(1)),
                        ty: Ty::Bool,
                        decl: None,
                        size: None,
                    });
                }
                let step = match operand.ty {
                    Ty::Object | Ty::Map(_) | Ty::Dyn => Cost::fixed(1),
                    _ => Cost::default(),
                };
                Node {
                    cost: operand.cost.add(step),
                    ..field
                }
            }
            Expr::List(list) => {
                let mut cost = Cost::fixed(10);
                let mut elem = Ty::Dyn;
                for x in &list.elements {
                    let n = self.expr(x)?;
                    cost = cost.add(n.cost);
                    elem = n.ty;
                }
                Node {
                    cost,
                    ty: Ty::List(Box::new(elem)),
                    decl: None,
                    size: Some(Size::fixed(list.elements.len() as u64)),
                }
            }
            Expr::Map(map) => {
                let mut cost = Cost::fixed(30);
                for entry in &map.entries {
                    if let cel::common::ast::EntryExpr::MapEntry(m) = &entry.expr {
                        cost = cost
                            .add(self.expr(&m.key)?.cost)
                            .add(self.expr(&m.value)?.cost);
                    }
                }
                Node {
                    cost,
                    ty: Ty::Map(Box::new(Ty::Dyn)),
                    decl: None,
                    size: Some(Size::fixed(map.entries.len() as u64)),
                }
            }
            Expr::Struct(_) => {
                return Err(CompileError("message construction is not supported".into()))
            }
            Expr::Comprehension(c) => self.comprehension(c)?,
            Expr::Call(call) => self.call(call)?,
            Expr::Unspecified => return Err(CompileError("empty expression".into())),
        })
    }

    fn comprehension(&mut self, c: &ComprehensionExpr) -> Result<Node<'d>, CompileError> {
        let range = self.expr(&c.iter_range)?;
        let init = self.expr(&c.accu_init)?;
        let (elem_ty, elem_decl) = match (&range.ty, range.decl.map(|d| &d.kind)) {
            (_, Some(DeclKind::List(e))) => (Ty::of(e), Some(&**e)),
            (_, Some(DeclKind::Map(_))) => (Ty::Str, Some(&*MAP_KEY)),
            (Ty::List(e), _) => ((**e).clone(), None),
            (Ty::Map(_), _) => (Ty::Str, Some(&*MAP_KEY)),
            (Ty::Dyn, _) => (Ty::Dyn, None),
            (other, _) => {
                return Err(CompileError(format!(
                    "expression of type {other:?} cannot be the range of a comprehension"
                )))
            }
        };
        let elem = Node {
            cost: Cost::fixed(1),
            ty: elem_ty,
            decl: elem_decl,
            size: None,
        };
        let accu = Node {
            cost: Cost::fixed(1),
            ty: init.ty.clone(),
            decl: None,
            size: init.size,
        };
        self.push(&c.accu_var, accu);
        self.push(&c.iter_var, elem.clone());
        if let Some(v2) = &c.iter_var2 {
            self.push(v2, elem);
        }
        let cond = self.expr(&c.loop_cond);
        let step = self.expr(&c.loop_step);
        self.pop(&c.iter_var);
        if let Some(v2) = &c.iter_var2 {
            self.pop(v2);
        }
        let (cond, step) = (cond?, step?);
        let result = self.expr(&c.result);
        self.pop(&c.accu_var);
        let result = result?;
        let count = range.size_or_unknown();
        let cost = range
            .cost
            .add(init.cost)
            .add(result.cost)
            .add(count.mul(step.cost.add(cond.cost)));
        let size = matches!(c.accu_init.expr, Expr::List(_) | Expr::Map(_)).then_some(count);
        Ok(Node {
            cost,
            ty: result.ty,
            decl: None,
            size,
        })
    }

    fn push(&mut self, name: &str, n: Node<'d>) {
        self.scopes.entry(name.to_string()).or_default().push(n);
    }

    fn pop(&mut self, name: &str) {
        if let Some(s) = self.scopes.get_mut(name) {
            s.pop();
        }
    }

    fn call(&mut self, call: &CallExpr) -> Result<Node<'d>, CompileError> {
        let target = match &call.target {
            Some(t) => Some(self.expr(t)?),
            None => None,
        };
        let args = call
            .args
            .iter()
            .map(|a| self.expr(a))
            .collect::<Result<Vec<_>, _>>()?;
        let arg_cost = args.iter().fold(Cost::default(), |c, a| c.add(a.cost));
        let target_cost = target.as_ref().map_or(Cost::default(), |t| t.cost);
        let (cost, ty, decl, size) =
            function_cost(&call.func_name, target.as_ref(), &args, arg_cost)?;
        Ok(Node {
            cost: target_cost.add(cost),
            ty,
            decl,
            size,
        })
    }
}

fn literal(l: &LiteralValue) -> Node<'static> {
    let (ty, size) = match l {
        LiteralValue::Boolean(_) => (Ty::Bool, None),
        LiteralValue::Int(_) => (Ty::Int, None),
        LiteralValue::UInt(_) => (Ty::Uint, None),
        LiteralValue::Double(_) => (Ty::Double, None),
        LiteralValue::Null => (Ty::Null, None),
        LiteralValue::String(s) => (Ty::Str, Some(Size::fixed(s.inner().chars().count() as u64))),
        LiteralValue::Bytes(b) => (Ty::Bytes, Some(Size::fixed(b.len() as u64))),
    };
    Node {
        cost: Cost::default(),
        ty,
        decl: None,
        size,
    }
}

fn select_field<'d>(operand: &Node<'d>, field: &str) -> Result<Node<'d>, CompileError> {
    match (operand.decl, &operand.ty) {
        (Some(d), Ty::Object | Ty::Map(_)) => {
            let f = d
                .field(field)
                .ok_or_else(|| CompileError(format!("undefined field '{field}'")))?;
            Ok(Node {
                cost: Cost::default(),
                ty: Ty::of(f),
                decl: Some(f),
                size: None,
            })
        }
        (None, Ty::Map(v)) => Ok(Node {
            cost: Cost::default(),
            ty: (**v).clone(),
            decl: None,
            size: None,
        }),
        (_, Ty::Dyn) | (None, Ty::Object) => Ok(Node {
            cost: Cost::default(),
            ty: Ty::Dyn,
            decl: None,
            size: None,
        }),
        (_, other) => Err(CompileError(format!(
            "type '{other:?}' does not support field selection"
        ))),
    }
}

type CallEstimate<'d> = (Cost, Ty, Option<&'d DeclType>, Option<Size>);

/// The cost of one call (its arguments' cost included, its target's not) and its result.
fn function_cost<'d>(
    name: &str,
    target: Option<&Node<'d>>,
    args: &[Node<'d>],
    arg_cost: Cost,
) -> Result<CallEstimate<'d>, CompileError> {
    operator_cost(name, target, args, arg_cost)
        .or_else(|| string_cost(name, target, args, arg_cost))
        .or_else(|| conversion_cost(name, target, args, arg_cost))
        .unwrap_or_else(|| {
            Err(CompileError(format!(
                "undeclared reference to '{name}' (in container '')"
            )))
        })
}

/// Operators: logic, comparisons, `in`, arithmetic, indexing.
#[allow(unused_variables)]
fn operator_cost<'d>(
    name: &str,
    target: Option<&Node<'d>>,
    args: &[Node<'d>],
    arg_cost: Cost,
) -> Option<Result<CallEstimate<'d>, CompileError>> {
    let one = Cost::fixed(1).add(arg_cost);
    let arg_size = |i: usize| args.get(i).map_or(UNKNOWN, Node::size_or_unknown);
    let target_size = || target.map_or(UNKNOWN, Node::size_or_unknown);
    let bool_result =
        |c: Cost| -> Result<CallEstimate<'d>, CompileError> { Ok((c, Ty::Bool, None, None)) };
    Some(match name {
        "_&&_" | "_||_" => bool_result(Cost {
            min: args[0].cost.min,
            max: args[0].cost.max.saturating_add(args[1].cost.max),
        }),
        "_?_:_" => {
            let size = args[1].size_or_unknown().union(args[2].size_or_unknown());
            let cost = args[0].cost.add(args[1].cost.union(args[2].cost));
            Ok((cost, args[1].ty.clone(), None, Some(size)))
        }
        "_==_" | "_!=_" | "_<_" | "_<=_" | "_>_" | "_>=_" => {
            let smallest = arg_size(0).max.min(arg_size(1).max);
            let range = Size {
                min: u64::from(smallest > 0),
                max: smallest,
            };
            let compare_strings =
                name == "_==_" || name == "_!=_" || matches!(args[0].ty, Ty::Str | Ty::Bytes);
            if compare_strings {
                bool_result(by_factor(range, STRING_TRAVERSAL).add(arg_cost))
            } else {
                bool_result(one)
            }
        }
        "@in" => match args[1].ty {
            Ty::Map(_) => bool_result(one),
            _ => bool_result(arg_size(1).add(arg_cost)),
        },
        "!_" | "@not_strictly_false" => bool_result(one),
        "_+_" => match &args[0].ty {
            Ty::Str | Ty::Bytes => {
                let size = arg_size(0).add(arg_size(1));
                Ok((
                    by_factor(size, STRING_TRAVERSAL).add(arg_cost),
                    args[0].ty.clone(),
                    None,
                    Some(size),
                ))
            }
            Ty::List(_) => Ok((
                one,
                args[0].ty.clone(),
                None,
                Some(arg_size(0).add(arg_size(1))),
            )),
            other => Ok((one, other.clone(), None, None)),
        },
        "_-_" | "_*_" | "_/_" | "_%_" | "-_" => Ok((one, args[0].ty.clone(), None, None)),
        "_[_]" => {
            let (ty, decl) = match (&args[0].ty, args[0].decl.map(|d| &d.kind)) {
                (_, Some(DeclKind::List(e))) | (_, Some(DeclKind::Map(e))) => {
                    (Ty::of(e), Some(&**e))
                }
                (Ty::List(e), _) | (Ty::Map(e), _) => ((**e).clone(), None),
                _ => (Ty::Dyn, None),
            };
            Ok((one, ty, decl, None))
        }
        _ => return None,
    })
}

/// String and regex functions, and the Kubernetes IP/URL library.
#[allow(unused_variables)]
fn string_cost<'d>(
    name: &str,
    target: Option<&Node<'d>>,
    args: &[Node<'d>],
    arg_cost: Cost,
) -> Option<Result<CallEstimate<'d>, CompileError>> {
    let one = Cost::fixed(1).add(arg_cost);
    let arg_size = |i: usize| args.get(i).map_or(UNKNOWN, Node::size_or_unknown);
    let target_size = || target.map_or(UNKNOWN, Node::size_or_unknown);
    let bool_result =
        |c: Cost| -> Result<CallEstimate<'d>, CompileError> { Ok((c, Ty::Bool, None, None)) };
    Some(match name {
        "matches" | "find" | "findAll" => {
            let (subject, regex) = match target {
                Some(t) => (t.size_or_unknown(), arg_size(0)),
                None => (arg_size(0), arg_size(1)),
            };
            let str_cost = by_factor(subject.add(Size::fixed(1)), STRING_TRAVERSAL);
            let cost = str_cost.mul(by_factor(regex, REGEX_LENGTH)).add(arg_cost);
            let ty = match name {
                "matches" => Ty::Bool,
                "find" => Ty::Str,
                _ => Ty::List(Box::new(Ty::Str)),
            };
            Ok((cost, ty, None, None))
        }
        "contains" => bool_result(
            by_factor(target_size(), STRING_TRAVERSAL)
                .mul(by_factor(arg_size(0), STRING_TRAVERSAL))
                .add(arg_cost),
        ),
        "startsWith" | "endsWith" => {
            bool_result(by_factor(arg_size(0), STRING_TRAVERSAL).add(arg_cost))
        }
        "isCIDR" | "isIP" | "cidr" | "ip" | "url" | "isURL" | "quantity" | "isQuantity" => {
            let ty = if name.starts_with("is") {
                Ty::Bool
            } else {
                Ty::Dyn
            };
            Ok((
                by_factor(arg_size(0), STRING_TRAVERSAL).add(arg_cost),
                ty,
                None,
                None,
            ))
        }
        "lowerAscii" | "upperAscii" | "trim" | "substring" => {
            let s = target_size();
            Ok((
                by_factor(s, STRING_TRAVERSAL).add(arg_cost),
                Ty::Str,
                None,
                Some(s),
            ))
        }
        "replace" | "split" => {
            let ty = if name == "split" {
                Ty::List(Box::new(Ty::Str))
            } else {
                Ty::Str
            };
            Ok((
                by_factor(target_size(), 2.0 * STRING_TRAVERSAL).add(arg_cost),
                ty,
                None,
                None,
            ))
        }
        "indexOf" | "lastIndexOf" => Ok((
            by_factor(target_size(), STRING_TRAVERSAL).add(arg_cost),
            Ty::Int,
            None,
            None,
        )),
        "join" => Ok((
            by_factor(target_size(), STRING_TRAVERSAL).add(arg_cost),
            Ty::Str,
            None,
            None,
        )),
        _ => return None,
    })
}

/// Conversions, `size`, and the list library.
#[allow(unused_variables)]
fn conversion_cost<'d>(
    name: &str,
    target: Option<&Node<'d>>,
    args: &[Node<'d>],
    arg_cost: Cost,
) -> Option<Result<CallEstimate<'d>, CompileError>> {
    let one = Cost::fixed(1).add(arg_cost);
    let arg_size = |i: usize| args.get(i).map_or(UNKNOWN, Node::size_or_unknown);
    let target_size = || target.map_or(UNKNOWN, Node::size_or_unknown);
    let bool_result =
        |c: Cost| -> Result<CallEstimate<'d>, CompileError> { Ok((c, Ty::Bool, None, None)) };
    Some(match name {
        "size" => Ok((one, Ty::Int, None, None)),
        "int" => Ok((one, Ty::Int, None, None)),
        "uint" => Ok((one, Ty::Uint, None, None)),
        "double" => Ok((one, Ty::Double, None, None)),
        "string" => Ok((one, Ty::Str, None, None)),
        "bytes" => Ok((one, Ty::Bytes, None, None)),
        "bool" => Ok((one, Ty::Bool, None, None)),
        "duration" => Ok((one, Ty::Duration, None, None)),
        "timestamp" => Ok((one, Ty::Timestamp, None, None)),
        "dyn" => Ok((one, args[0].ty.clone(), args[0].decl, args[0].size)),
        "type" => Ok((one, Ty::Dyn, None, None)),
        "isSorted" | "sum" | "min" | "max" => {
            let elem = match target.map(|t| &t.ty) {
                Some(Ty::List(e)) => (**e).clone(),
                _ => Ty::Dyn,
            };
            let ty = if name == "isSorted" { Ty::Bool } else { elem };
            Ok((target_size().add(arg_cost), ty, None, None))
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cost(schema: serde_json::Value, rule: &str) -> u64 {
        estimate(rule, &DeclType::of(&schema).unwrap()).unwrap().max
    }

    #[test]
    fn simple_costs() {
        let obj = json!({"type": "object", "properties": {
            "a": {"type": "integer"}, "b": {"type": "integer"}}});
        // two selections (1 + 1 each) and one comparison (1)
        assert_eq!(cost(obj.clone(), "self.a <= self.b"), 5);
        assert_eq!(cost(obj, "has(self.a)"), 2);
    }

    #[test]
    fn compile_errors() {
        let root =
            DeclType::of(&json!({"type": "object", "properties": {"a": {"type": "string"}}}))
                .unwrap();
        assert!(estimate("self.nope == 'x'", &root)
            .unwrap_err()
            .0
            .contains("undefined field 'nope'"));
        assert!(estimate("frobnicate(self.a)", &root).is_err());
        assert!(estimate("self.a ==", &root).is_err());
    }
}
