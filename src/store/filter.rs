//! Dynamic `WHERE` clauses (the operators' list filters), with their
//! values bound in the backend's own placeholders. sqlx's `QueryBuilder`
//! over `Any` writes `?` for every backend, which PostgreSQL does not take;
//! [`super::Binds`] writes `$n` there.

use super::Binds;
use sqlx::any::AnyArguments;
use sqlx::query::Query;
use sqlx::{Any, AnyConnection};

/// One bound value.
enum Value {
    Text(String),
    Int(i64),
}

/// Conditions joined by `AND`, and their values.
pub(crate) struct Where {
    conditions: Vec<String>,
    values: Vec<Value>,
    binds: Binds,
}

impl Where {
    /// An empty filter for the backend behind `conn`.
    pub(crate) fn for_conn(conn: &AnyConnection) -> Self {
        Self {
            conditions: Vec::new(),
            values: Vec::new(),
            binds: Binds::for_conn(conn),
        }
    }

    /// `column op value`, e.g. `("d.created_at", ">=", …)`.
    pub(crate) fn text(&mut self, column: &str, op: &str, v: &str) -> &mut Self {
        let p = self.binds.next();
        self.conditions.push(format!("{column} {op} {p}"));
        self.values.push(Value::Text(v.to_owned()));
        self
    }

    /// `column op value` for a number.
    pub(crate) fn int(&mut self, column: &str, op: &str, v: i64) -> &mut Self {
        let p = self.binds.next();
        self.conditions.push(format!("{column} {op} {p}"));
        self.values.push(Value::Int(v));
        self
    }

    /// `column IN (…)`; nothing when `values` is empty (any value).
    pub(crate) fn any_of(&mut self, column: &str, values: &[&str]) -> &mut Self {
        if !values.is_empty() {
            let list = self.binds.list(values.len());
            self.conditions.push(format!("{column} IN ({list})"));
            self.values
                .extend(values.iter().map(|v| Value::Text((*v).to_owned())));
        }
        self
    }

    /// ` WHERE a AND b` (empty without conditions).
    pub(crate) fn clause(&self) -> String {
        if self.conditions.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", self.conditions.join(" AND "))
        }
    }

    /// Binds the values, in order, to `q` (made from SQL holding [`Self::clause`]).
    pub(crate) fn bind<'q>(
        self,
        mut q: Query<'q, Any, AnyArguments>,
    ) -> Query<'q, Any, AnyArguments> {
        for v in self.values {
            q = match v {
                Value::Text(s) => q.bind(s),
                Value::Int(i) => q.bind(i),
            };
        }
        q
    }
}
